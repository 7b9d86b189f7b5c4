package pauses

import "testing"

func TestKeys(t *testing.T) {
	for _, c := range []struct {
		group string
		band  int
		key   string
	}{
		{"chat", AllBands, "chat.all"},
		{"chat", 3, "chat.b3"},
		{"openai/gpt-4.1", 0, "openai=2Fgpt-4=2E1.b0"},
		{"", AllBands, "=.all"},
	} {
		if got := key(c.group, c.band); got != c.key {
			t.Errorf("key(%q, %d) = %q, want %q", c.group, c.band, got, c.key)
		}
		g, b, ok := parseKey(c.key)
		if !ok || g != c.group || b != c.band {
			t.Errorf("parseKey(%q) = %q, %d, %v", c.key, g, b, ok)
		}
	}
	for _, bad := range []string{"chat", "chat.x", "chat.b-1", "chat.bx", "ch at.all", "=ZZ.all"} {
		if _, _, ok := parseKey(bad); ok {
			t.Errorf("parseKey(%q) accepted", bad)
		}
	}
}
