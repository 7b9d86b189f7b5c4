package cputime

import (
	"os"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
	line := "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 123 0 0\n"
	got, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3 * time.Second; got != want {
		t.Errorf("parseStat = %s, want %s (300 ticks)", got, want)
	}
	if _, err := parseStat("garbage"); err == nil {
		t.Error("parseStat(garbage) succeeded")
	}
}

func TestProcSelf(t *testing.T) {
	if _, err := Proc(os.Getpid()); err != nil {
		t.Fatalf("Proc(self): %v", err)
	}
	if _, err := Self(); err != nil {
		t.Fatalf("Self: %v", err)
	}
}
