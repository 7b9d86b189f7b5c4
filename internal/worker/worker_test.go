package worker

import "testing"

func TestWorkCount(t *testing.T) {
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	var w workCount
	if !closed(w.idle()) {
		t.Fatal("a count never used is not idle")
	}
	w.Add(1)
	w.Add(1)
	idle := w.idle()
	if closed(idle) {
		t.Fatal("idle with two in progress")
	}
	w.Done()
	if closed(idle) {
		t.Fatal("idle with one in progress")
	}
	w.Done()
	if !closed(idle) {
		t.Fatal("not idle after the last Done")
	}
	w.Add(1) // work may start again after a drain looked
	if !closed(idle) {
		t.Fatal("the channel a drain waits on opened again")
	}
	if closed(w.idle()) {
		t.Fatal("idle again with one in progress")
	}
}
