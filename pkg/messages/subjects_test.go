package messages_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/llmq/llmq/pkg/messages"
)

// isTokenChar reports whether c may appear in an encoded group token.
func isTokenChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '='
}

// checkToken checks that tok, the encoding of group, uses only token
// characters and decodes back to group.
func checkToken(t *testing.T, group, tok string) {
	t.Helper()
	if tok == "" {
		t.Fatalf("EncodeToken(%q) is empty", group)
	}
	for i := 0; i < len(tok); i++ {
		if !isTokenChar(tok[i]) {
			t.Fatalf("EncodeToken(%q) = %q: byte %q at %d is not in [A-Za-z0-9_=-]", group, tok, tok[i], i)
		}
	}
	got, err := messages.DecodeToken(tok)
	if err != nil {
		t.Fatalf("DecodeToken(EncodeToken(%q) = %q): %v", group, tok, err)
	}
	if got != group {
		t.Fatalf("DecodeToken(EncodeToken(%q) = %q) = %q", group, tok, got)
	}
}

func TestEncodeToken(t *testing.T) {
	tests := []struct {
		name, group, want string
	}{
		{"plain", "gpt-4o", "gpt-4o"},
		{"underscore and digits", "llama_3_70b", "llama_3_70b"},
		{"provider path", "openai/gpt-4.1", "openai=2Fgpt-4=2E1"},
		{"spaces", "my model", "my=20model"},
		{"equals sign", "a=b", "a=3Db"},
		{"lone equals sign", "=", "=3D"},
		{"star", "gpt*", "gpt=2A"},
		{"greater than", "gpt>", "gpt=3E"},
		{"dot", "a.b", "a=2Eb"},
		{"unicode", "modèle-ü", "mod=C3=A8le-=C3=BC"},
		{"emoji", "🤖", "=F0=9F=A4=96"},
		{"control byte", "a\x00b", "a=00b"},
		{"invalid utf-8", "a\xffb", "a=FFb"},
		{"empty", "", "="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := messages.EncodeToken(tt.group)
			if got != tt.want {
				t.Errorf("EncodeToken(%q) = %q, want %q", tt.group, got, tt.want)
			}
			checkToken(t, tt.group, got)
		})
	}
}

func TestDecodeTokenErrors(t *testing.T) {
	tests := []struct {
		name, tok string
	}{
		{"dangling escape", "a="},
		{"short escape", "a=4"},
		{"non-hex escape", "=ZZ"},
		{"half hex escape", "=4G"},
		{"lower-case hex", "=2f"},
		{"dot", "a.b"},
		{"space", "a b"},
		{"star", "a*"},
		{"greater than", ">"},
		{"slash", "openai/gpt"},
		{"unicode", "ü"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := messages.DecodeToken(tt.tok); err == nil {
				t.Errorf("DecodeToken(%q) = %q, want an error", tt.tok, got)
			}
		})
	}
}

// TestEncodeTokenAllBytes checks the property for every single byte and for
// every byte between plain characters.
func TestEncodeTokenAllBytes(t *testing.T) {
	for c := 0; c < 256; c++ {
		for _, g := range []string{string([]byte{byte(c)}), "a" + string([]byte{byte(c)}) + "b"} {
			checkToken(t, g, messages.EncodeToken(g))
		}
	}
}

func FuzzToken(f *testing.F) {
	for _, s := range []string{"", "gpt-4o", "openai/gpt-4.1", "a b", "=", "==", "=3D", "*", ">", "llmq.req.0.x", "modèle", "\xff\xfe", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// Any name round-trips through its token.
		checkToken(t, s, messages.EncodeToken(s))
		// Any token that decodes names a group whose own token decodes to it
		// again (tokens need not be canonical, e.g. "=41" and "A").
		if g, err := messages.DecodeToken(s); err == nil {
			checkToken(t, g, messages.EncodeToken(g))
		}
	})
}

func TestNewSubjects(t *testing.T) {
	for _, tt := range []struct{ prefix, want string }{
		{"", messages.DefaultPrefix},
		{"llmq", "llmq"},
		{"my-app_2", "my-app_2"},
	} {
		s, err := messages.NewSubjects(tt.prefix)
		if err != nil {
			t.Fatalf("NewSubjects(%q): %v", tt.prefix, err)
		}
		if s.Prefix() != tt.want {
			t.Errorf("NewSubjects(%q).Prefix() = %q, want %q", tt.prefix, s.Prefix(), tt.want)
		}
	}
	for _, bad := range []string{"a.b", "llmq.", ".llmq", "a b", "*", ">", "llmq>", "a/b", "préfixe", "a=b", "\t"} {
		if s, err := messages.NewSubjects(bad); err == nil {
			t.Errorf("NewSubjects(%q) = %q, want an error", bad, s.Prefix())
		}
	}
}

func mustSubjects(t testing.TB, prefix string) messages.Subjects {
	t.Helper()
	s, err := messages.NewSubjects(prefix)
	if err != nil {
		t.Fatalf("NewSubjects(%q): %v", prefix, err)
	}
	return s
}

func TestSubjectNames(t *testing.T) {
	s := mustSubjects(t, "")
	tests := []struct {
		name, got, want string
	}{
		{"Request", s.Request(3, "openai/gpt-4.1"), "llmq.req.3.openai=2Fgpt-4=2E1"},
		{"Request plain", s.Request(0, "gpt-4o"), "llmq.req.0.gpt-4o"},
		{"Wake", s.Wake(9, "gpt-4o"), "llmq.wake.9.gpt-4o"},
		{"Consumer", s.Consumer(3, "openai/gpt-4.1"), "llmq_b3_openai=2Fgpt-4=2E1"},
		{"RequestWildcard", s.RequestWildcard(), "llmq.req.>"},
		{"WakeWildcard", s.WakeWildcard(), "llmq.wake.>"},
		{"DeadLetterWildcard", s.DeadLetterWildcard(), "llmq.dead.>"},
		{"RequestStream", s.RequestStream(), "LLMQ_REQUESTS"},
		{"DeadLetterStream", s.DeadLetterStream(), "LLMQ_DEAD"},
		{"RequestStream custom", mustSubjects(t, "team-a").RequestStream(), "TEAM-A_REQUESTS"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestConsumerIsValidName(t *testing.T) {
	s := mustSubjects(t, "")
	for _, g := range []string{"openai/gpt-4.1", "a b*>", "", "modèle"} {
		c := s.Consumer(4, g)
		// JetStream consumer names may not contain '.', '*', '>', '/', '\' or whitespace.
		if strings.ContainsAny(c, ".*>/\\ \t\r\n") || !utf8.ValidString(c) {
			t.Errorf("Consumer(4, %q) = %q is not a valid consumer name", g, c)
		}
	}
}

func TestParseRequestRoundTrip(t *testing.T) {
	for _, prefix := range []string{"llmq", "my-app_2"} {
		s := mustSubjects(t, prefix)
		for _, band := range []int{0, 1, 9, 62} {
			for _, g := range []string{"gpt-4o", "openai/gpt-4.1", "a b", "", "=", "x.y.z", "modèle"} {
				for kind, subj := range map[string]string{
					"request":     s.Request(band, g),
					"wake":        s.Wake(band, g),
					"dead letter": s.DeadLetter(s.Request(band, g)),
				} {
					gotBand, gotGroup, err := s.ParseRequest(subj)
					if err != nil {
						t.Errorf("ParseRequest(%q) (%s of band %d, group %q): %v", subj, kind, band, g, err)
						continue
					}
					if gotBand != band || gotGroup != g {
						t.Errorf("ParseRequest(%q) = %d, %q; want %d, %q", subj, gotBand, gotGroup, band, g)
					}
				}
			}
		}
	}
}

func TestParseRequestErrors(t *testing.T) {
	s := mustSubjects(t, "")
	tests := []struct {
		name, subject string
	}{
		{"empty", ""},
		{"other prefix", "other.req.0.gpt"},
		{"prefix is only a substring", "llmqx.req.0.gpt"},
		{"prefix only", "llmq"},
		{"unknown kind", "llmq.resp.0.gpt"},
		{"missing band and group", "llmq.req"},
		{"missing group", "llmq.req.0"},
		{"band not a number", "llmq.req.x.gpt"},
		{"negative band", "llmq.req.-1.gpt"},
		{"band overflow", "llmq.req.99999999999999999999999.gpt"},
		{"extra token", "llmq.req.0.gpt.extra"},
		{"lane past the last", "llmq.req.0.gpt.t32"},
		{"lane with a leading zero", "llmq.req.0.gpt.t07"},
		{"negative lane", "llmq.req.0.gpt.t-1"},
		{"two lanes", "llmq.req.0.gpt.t1.t2"},
		{"wildcard", "llmq.req.>"},
		{"bad escape", "llmq.req.0.a=ZZ"},
		{"bad character", "llmq.req.0.a*"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			band, group, err := s.ParseRequest(tt.subject)
			if err == nil {
				t.Fatalf("ParseRequest(%q) = %d, %q; want an error", tt.subject, band, group)
			}
			if !errors.Is(err, messages.ErrBadSubject) {
				t.Errorf("ParseRequest(%q) error %v does not match ErrBadSubject", tt.subject, err)
			}
		})
	}
}

func TestDeadLetter(t *testing.T) {
	s := mustSubjects(t, "")
	tests := []struct{ in, want string }{
		{"llmq.req.3.gpt-4o", "llmq.dead.3.gpt-4o"},
		{"llmq.req.0.openai=2Fgpt-4=2E1", "llmq.dead.0.openai=2Fgpt-4=2E1"},
		{"other.req.3.gpt-4o", "llmq.dead.unknown"},
		{"llmq.wake.3.gpt-4o", "llmq.dead.unknown"},
		{"llmqx.req.3.gpt-4o", "llmq.dead.unknown"},
		{"", "llmq.dead.unknown"},
	}
	for _, tt := range tests {
		if got := s.DeadLetter(tt.in); got != tt.want {
			t.Errorf("DeadLetter(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestLanes(t *testing.T) {
	s := mustSubjects(t, "")
	if l := messages.Lane(""); l != messages.NoLane {
		t.Errorf("Lane(\"\") = %d, want NoLane", l)
	}
	if l := messages.Lane(messages.TenantAnonymous); l != messages.NoLane {
		t.Errorf("Lane(anonymous) = %d, want NoLane: old publishers and anonymous callers share the band and group's own subject", l)
	}
	seen := map[int]bool{}
	for i := range 1000 {
		l := messages.Lane("tenant-" + strconv.Itoa(i))
		if l < 0 || l >= messages.TenantLanes {
			t.Fatalf("Lane = %d, outside [0, %d)", l, messages.TenantLanes)
		}
		seen[l] = true
	}
	if len(seen) != messages.TenantLanes {
		t.Errorf("1000 tenants used %d of %d lanes", len(seen), messages.TenantLanes)
	}
	// Fixed values: internal services compute lanes too.
	for tenant, want := range map[string]int{"acme": 15, "team-a": 22, "team-b": 3} /* FNV-1a, 32-bit, mod 32 */ {
		if got := messages.Lane(tenant); got != want {
			t.Errorf("Lane(%q) = %d, want %d", tenant, got, want)
		}
	}
	for _, lane := range []int{messages.NoLane, 0, 7, messages.TenantLanes - 1} {
		for kind, subj := range map[string]string{
			"request": s.RequestLane(3, "openai/gpt-4.1", lane),
			"wake":    s.WakeLane(3, "openai/gpt-4.1", lane),
			"served":  s.Served(3, "openai/gpt-4.1", lane),
			"dead":    s.DeadLetter(s.RequestLane(3, "openai/gpt-4.1", lane)),
		} {
			band, group, got, err := s.ParseLane(subj)
			if err != nil || band != 3 || group != "openai/gpt-4.1" || got != lane {
				t.Errorf("ParseLane(%q) (%s) = %d, %q, %d, %v; want 3, openai/gpt-4.1, %d", subj, kind, band, group, got, err, lane)
			}
		}
		c := s.ConsumerLane(3, "a b", lane)
		if strings.ContainsAny(c, ".*>/\\ ") {
			t.Errorf("ConsumerLane = %q is not a valid consumer name", c)
		}
	}
}

func TestBatchReplySubjects(t *testing.T) {
	s, err := messages.NewSubjects("q")
	if err != nil {
		t.Fatal(err)
	}
	subj := s.BatchReply("batch_ABC", 42)
	if subj != "q.batch.batch_ABC.42" {
		t.Fatalf("BatchReply = %q", subj)
	}
	id, n, err := s.ParseBatchReply(subj)
	if err != nil || id != "batch_ABC" || n != 42 {
		t.Fatalf("ParseBatchReply(%q) = %q, %d, %v", subj, id, n, err)
	}
	for _, bad := range []string{"q.batch.x", "q.batch.x.-1", "q.batch.x.y", "llmq.batch.x.1", "q.batch.a.b.1"} {
		if _, _, err := s.ParseBatchReply(bad); !errors.Is(err, messages.ErrBadSubject) {
			t.Errorf("ParseBatchReply(%q) = %v, want ErrBadSubject", bad, err)
		}
	}
}
