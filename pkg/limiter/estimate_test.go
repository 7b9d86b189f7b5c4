package limiter

import "testing"

func TestTextTokens(t *testing.T) {
	tests := []struct {
		text string
		want int64
	}{
		{"", 0},
		{"hello", 1},
		{"hello world", 2},          // the space joins "world"
		{"internationalization", 3}, // 20 letters
		{"1234567", 3},              // digits in threes
		{"a, b.", 4},                // a , " b" .
		{"x\n\ny", 3},               // a newline run is a token
		{"日本語", 3},                  // one per CJK character
		{"Größe", 2},                // non-ASCII word: one per 3 letters
		{"🙂!", 2},
	}
	for _, tc := range tests {
		if got := textTokens(tc.text); got != tc.want {
			t.Errorf("textTokens(%q) = %d, want %d", tc.text, got, tc.want)
		}
	}
}

func TestEstimateTokens(t *testing.T) {
	// "Say hello" = 2 tokens, "user" = 1, "system" = 1.
	tests := []struct {
		name string
		body string
		def  int64
		want int64
	}{
		{
			name: "chat with max_tokens",
			body: `{"model":"m","messages":[{"role":"user","content":"Say hello"}],"max_tokens":100}`,
			def:  500, want: 3 + 4 + 1 + 2 + 100,
		},
		{
			name: "max_completion_tokens wins over max_tokens",
			body: `{"messages":[{"role":"user","content":"Say hello"}],"max_tokens":100,"max_completion_tokens":50}`,
			def:  500, want: 3 + 4 + 1 + 2 + 50,
		},
		{
			name: "no budget: default completion, times n",
			body: `{"messages":[{"role":"system","content":"Say hello"},{"role":"user","content":"Say hello","name":"bob"}],"n":3}`,
			def:  10, want: 3 + (4 + 1 + 2) + (4 + 1 + 2 + 1) + 3*10,
		},
		{
			name: "content parts with an image",
			body: `{"messages":[{"role":"user","content":[{"type":"text","text":"Say hello"},{"type":"image_url","image_url":{"url":"data:..."}}]}],"max_tokens":0}`,
			def:  10, want: 3 + 4 + 1 + 2 + imageTokens,
		},
		{
			name: "completions with two prompts",
			body: `{"prompt":["Say hello","Say hello"],"max_tokens":5}`,
			def:  10, want: 2 + 2 + 2*5,
		},
		{
			name: "completions with token ids",
			body: `{"prompt":[1,2,3,4],"max_tokens":5}`,
			def:  10, want: 4 + 5,
		},
		{
			name: "not JSON",
			body: `Say hello`,
			def:  7, want: 2 + 7,
		},
		{
			name: "absurd budget saturates",
			body: `{"prompt":"x","max_tokens":9000000000000000000,"n":9000000000000000000}`,
			def:  0, want: maxEstimate,
		},
		{
			name: "negative default counts as zero",
			body: `{"prompt":"Say hello"}`,
			def:  -5, want: 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := EstimateTokens([]byte(tc.body), tc.def); got != tc.want {
				t.Errorf("EstimateTokens = %d, want %d", got, tc.want)
			}
		})
	}
}

func FuzzEstimateTokens(f *testing.F) {
	f.Add([]byte(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}`), int64(5))
	f.Add([]byte(`{"prompt":[[1,2],[3]]}`), int64(0))
	f.Fuzz(func(t *testing.T, body []byte, def int64) {
		if n := EstimateTokens(body, def%1_000_000); n < 0 {
			t.Fatalf("negative estimate %d", n)
		}
	})
}
