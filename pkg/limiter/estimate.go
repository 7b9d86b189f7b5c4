package limiter

import (
	"encoding/json"
	"unicode"
	"unicode/utf8"
)

// Token costs that EstimateTokens adds besides text.
const (
	// perMessageTokens frames one chat message (role, separators), as in
	// OpenAI's published counting recipe; replyPrimingTokens primes the reply.
	perMessageTokens   = 4
	replyPrimingTokens = 3
	// imageTokens is the cost of one image part: a 1024x1024 image at high
	// detail (85 + 4*170). Larger images cost more, low detail 85.
	imageTokens = 765
)

// EstimateTokens estimates the tokens an OpenAI chat completions or
// completions request body will be charged for, offline and without a
// vocabulary: the prompt (messages, or prompt for completions, plus tools and
// functions) and the completion budget, max_completion_tokens or else
// max_tokens, or else defaultCompletion, times n choices. A body that is not
// JSON is estimated as plain text plus defaultCompletion.
//
// Text is counted with a pre-tokenizer in the style of the GPT BPE encoders:
// a word of ASCII letters costs one token per 8 letters or part of them, a
// word with other letters one per 3, digits one per 3, ASCII punctuation one
// per 2 characters, a run of spaces or newlines at most one, and each CJK
// character, emoji or other symbol one.
//
// Accuracy, measured against the cl100k_base and o200k_base encodings: English
// prose, Markdown, Go, Python and JSON came out between 5% under and 16% over;
// French, German, Russian and Chinese between 29% under (German compounds in
// cl100k) and 53% over (Cyrillic and Chinese in o200k, which needs far fewer
// tokens for them). The rule of thumb of 4 characters per token does as well
// on English but is 4x under on Chinese. A text of rare long words or dense
// symbols can be off by half either way, and message framing follows OpenAI's
// published recipe (4 tokens a message, 3 for the reply). It is an estimate,
// not a bound: Settle with the usage the provider reports corrects the tpm
// account afterwards.
func EstimateTokens(body []byte, defaultCompletion int64) int64 {
	defaultCompletion = max(defaultCompletion, 0)
	var req struct {
		Messages []struct {
			Role      string          `json:"role"`
			Name      string          `json:"name"`
			Content   json.RawMessage `json:"content"`
			ToolCalls json.RawMessage `json:"tool_calls"`
		} `json:"messages"`
		Prompt              json.RawMessage `json:"prompt"`
		Tools               json.RawMessage `json:"tools"`
		Functions           json.RawMessage `json:"functions"`
		MaxTokens           *int64          `json:"max_tokens"`
		MaxCompletionTokens *int64          `json:"max_completion_tokens"`
		N                   *int64          `json:"n"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return textTokens(string(body)) + defaultCompletion
	}
	var prompt int64
	if len(req.Messages) > 0 {
		prompt += replyPrimingTokens
	}
	for _, m := range req.Messages {
		prompt += perMessageTokens + textTokens(m.Role) + textTokens(m.Name)
		prompt += contentTokens(m.Content) + rawTokens(m.ToolCalls)
	}
	prompts := int64(1)
	if len(req.Prompt) > 0 {
		var p int64
		p, prompts = promptTokens(req.Prompt)
		prompt += p
	}
	prompt += rawTokens(req.Tools) + rawTokens(req.Functions)

	completion := defaultCompletion
	switch {
	case req.MaxCompletionTokens != nil && *req.MaxCompletionTokens >= 0:
		completion = *req.MaxCompletionTokens
	case req.MaxTokens != nil && *req.MaxTokens >= 0:
		completion = *req.MaxTokens
	}
	choices := int64(1)
	if req.N != nil && *req.N > 1 {
		choices = *req.N
	}
	mult := choices * max(prompts, 1)
	if choices > maxEstimate/max(prompts, 1) || (completion > 0 && mult > (maxEstimate-prompt)/completion) {
		return maxEstimate
	}
	return prompt + completion*mult
}

// maxEstimate caps EstimateTokens against overflow from absurd budgets.
const maxEstimate = 1 << 53

// contentTokens counts a message content: a string or an array of parts.
func contentTokens(raw json.RawMessage) int64 {
	if len(raw) == 0 || string(raw) == "null" {
		return 0
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return textTokens(s)
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) != nil {
		return rawTokens(raw)
	}
	var n int64
	for _, p := range parts {
		switch p.Type {
		case "text", "input_text":
			n += textTokens(p.Text)
		case "image_url", "input_image":
			n += imageTokens
		default:
			n += rawTokens(raw) / int64(len(parts))
		}
	}
	return n
}

// promptTokens counts a completions prompt (a string, strings, token ids or
// lists of token ids) and how many prompts it holds.
func promptTokens(raw json.RawMessage) (tokens, prompts int64) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return textTokens(s), 1
	}
	var ss []string
	if json.Unmarshal(raw, &ss) == nil {
		for _, s := range ss {
			tokens += textTokens(s)
		}
		return tokens, int64(len(ss))
	}
	var ids []int64
	if json.Unmarshal(raw, &ids) == nil {
		return int64(len(ids)), 1
	}
	var idss [][]int64
	if json.Unmarshal(raw, &idss) == nil {
		for _, ids := range idss {
			tokens += int64(len(ids))
		}
		return tokens, int64(len(idss))
	}
	return rawTokens(raw), 1
}

// rawTokens counts a JSON value as text.
func rawTokens(raw json.RawMessage) int64 {
	if len(raw) == 0 || string(raw) == "null" {
		return 0
	}
	return textTokens(string(raw))
}

// textTokens estimates the tokens of s; see EstimateTokens.
func textTokens(s string) int64 {
	var n int64
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case isCJK(r) || (r >= utf8.RuneSelf && !unicode.IsLetter(r) && !unicode.IsSpace(r) && !unicode.IsDigit(r)):
			n++ // ideographs, emoji, symbols: about one token each
			i += size
		case unicode.IsLetter(r):
			j, letters, ascii := i, 0, true
			for j < len(s) {
				r, size := utf8.DecodeRuneInString(s[j:])
				if !unicode.IsLetter(r) || isCJK(r) {
					break
				}
				letters++
				ascii = ascii && r < utf8.RuneSelf
				j += size
			}
			if ascii {
				n += int64((letters + 7) / 8)
			} else {
				n += int64((letters + 2) / 3)
			}
			i = j
		case unicode.IsDigit(r):
			j := i
			for j < len(s) {
				r, size := utf8.DecodeRuneInString(s[j:])
				if !unicode.IsDigit(r) {
					break
				}
				j += size
			}
			n += int64((j - i + 2) / 3)
			i = j
		case unicode.IsSpace(r):
			// A single space joins the next word's token; a longer run or a
			// newline is a token of its own.
			j := i
			for j < len(s) {
				r, size := utf8.DecodeRuneInString(s[j:])
				if !unicode.IsSpace(r) {
					break
				}
				j += size
			}
			if j-i > 1 || r != ' ' {
				n++
			}
			i = j
		default: // ASCII punctuation
			j := i
			for j < len(s) && s[j] < utf8.RuneSelf && isPunct(s[j]) {
				j++
			}
			if j == i {
				j++ // control characters
			}
			n += int64((j - i + 1) / 2)
			i = j
		}
	}
	return n
}

func isPunct(c byte) bool {
	return c > ' ' && c < 0x7f && !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z')
}

func isCJK(r rune) bool {
	return unicode.In(r, unicode.Han, unicode.Hiragana, unicode.Katakana, unicode.Hangul)
}
