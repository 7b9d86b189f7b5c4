// Package phase holds the benchmark's phases, one file each: latency and
// closed (the same load against the fake upstream directly, through a plain
// HTTP hop and through llmq), priority (separation of two bands under
// overload), memory (what waiting requests cost the gateway) and idle (what
// idle workers cost). Each phase starts what it needs on 127.0.0.1, in a
// directory of its own, and stops it before it returns. llmq keeps its queue
// in the gateway's embedded NATS server, or, in the R3 variants, in a fresh
// 3-node NATS cluster started for the phase (nats.go).
package phase

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/llmq/llmq/bench/internal/system"
)

// Env is what every phase gets from the program.
type Env struct {
	// Dir is a scratch directory; each phase works in a subdirectory.
	Dir string
	// LogOut receives llmq's own logs (errors and warnings).
	LogOut io.Writer
	// Progress receives one line per step.
	Progress io.Writer
	// BinDir holds the gateway and worker binaries (system.Build); empty
	// when the external processes are not measured.
	BinDir string
	// HoldCmd returns the command of a child process that sends n
	// requests to url, rate per second, each waiting for its answer, and
	// prints a load.HoldResult as JSON when all are answered.
	HoldCmd func(ctx context.Context, url string, n, rate int) *exec.Cmd
	// NodeCmd runs one node of the 3-node NATS cluster of the R3
	// measurements (system.StartCluster).
	NodeCmd system.NodeCommand
	// ParkAfter is every llmq gateway's LLMQ_PARK_AFTER.
	ParkAfter time.Duration
}

func (e Env) logf(format string, args ...any) {
	fmt.Fprintf(e.Progress, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// subdir makes a fresh directory for one phase's stores and configs.
func (e Env) subdir(name string) (string, error) {
	return os.MkdirTemp(e.Dir, name+"-")
}

// processOptions writes cfg into a fresh directory and returns the options of
// an llmq process using it.
func (e Env) processOptions(name string, cfg system.Config) (system.ProcessOptions, error) {
	dir, err := e.subdir(name)
	if err != nil {
		return system.ProcessOptions{}, err
	}
	path, err := system.WriteConfig(dir, cfg)
	if err != nil {
		return system.ProcessOptions{}, err
	}
	return system.ProcessOptions{Config: path, DataDir: filepath.Join(dir, "data"), LogOut: e.LogOut, ParkAfter: e.ParkAfter}, nil
}

// Mem is what the process holds, read after two garbage collections.
type Mem struct {
	Heap   uint64 // HeapInuse: spans with heap objects
	Stacks uint64 // StackInuse: goroutine stacks
}

// Total is heap plus stacks.
func (m Mem) Total() uint64 { return m.Heap + m.Stacks }

// Above returns m - base in MB, per part and in total.
func (m Mem) Above(base Mem) (heap, stacks, total float64) {
	heap = MB(int64(m.Heap) - int64(base.Heap))
	stacks = MB(int64(m.Stacks) - int64(base.Stacks))
	return heap, stacks, heap + stacks
}

// readMem collects garbage twice (finalizers run between) and returns the
// bytes in in-use heap spans and in goroutine stacks.
func readMem() Mem {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return Mem{Heap: m.HeapInuse, Stacks: m.StackInuse}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// MB is a byte count in mebibytes.
func MB(b int64) float64 { return float64(b) / (1 << 20) }

func numGoroutine() int { return runtime.NumGoroutine() }
