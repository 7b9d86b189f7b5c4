package main

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/llmq/llmq/internal/fakeupstream"
)

// TestDownable checks the spare's port: it forwards, refuses while down,
// forwards again on the same port once up, and passes an upstream's reset on.
func TestDownable(t *testing.T) {
	fake := fakeupstream.New(fakeupstream.Options{})
	defer fake.Close()
	d, err := newDownable(strings.TrimSuffix(strings.TrimPrefix(fake.URL, "http://"), "/v1"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	post := func() (int, error) {
		resp, err := hc.Post("http://"+d.addr+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"x"}]}`))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		return resp.StatusCode, err
	}
	if st, err := post(); err != nil || st != 200 {
		t.Fatalf("before down: %d %v", st, err)
	}
	d.down()
	if _, err := post(); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("while down: %v, want connection refused", err)
	}
	if err := d.up(); err != nil {
		t.Fatal(err)
	}
	if st, err := post(); err != nil || st != 200 {
		t.Fatalf("after up: %d %v", st, err)
	}
	fake.SetFault(fakeupstream.FaultReset)
	if _, err := post(); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("upstream reset: %v, want connection reset", err)
	}
	if n := fake.Count(); n != 3 {
		t.Fatalf("the upstream saw %d calls, want 3", n)
	}
}
