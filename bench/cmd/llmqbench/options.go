package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/llmq/llmq/bench/internal/load"
	"github.com/llmq/llmq/bench/internal/phase"
)

// allPhases are the phases in the order they run: the two that read the
// process's heap and CPU at rest come first, before the load phases leave
// garbage, idle connections and runtime housekeeping behind.
var allPhases = []string{"idle", "memory", "latency", "closed", "priority"}

// options are the parsed flags.
type options struct {
	short     bool
	phases    []string
	processes bool
	r3        bool
	verbose   bool
	timeout   time.Duration
	parkAfter time.Duration
	latency   phase.CompareConfig
	closed    phase.CompareConfig
	priority  phase.PriorityConfig
	memory    phase.MemoryConfig
	idle      phase.IdleConfig
}

func (o *options) has(p string) bool { return slices.Contains(o.phases, p) }

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	return fs
}

// parseOptions reads the flags. With -short, every duration and count that
// was not set explicitly takes its short value.
func parseOptions(args []string) (*options, error) {
	fs := newFlagSet("llmqbench")
	o := &options{}
	var phases string
	var closedOnly bool
	var rate, clients int
	var duration, closedDuration time.Duration
	fs.BoolVar(&o.short, "short", false, "tiny durations and counts: checks that the harness works (CI), not the numbers")
	fs.StringVar(&phases, "phases", strings.Join(allPhases, ","), "comma-separated phases to run: "+strings.Join(allPhases, ", "))
	fs.BoolVar(&closedOnly, "closed", false, "run only the closed-loop (maximum throughput) phase; same as -phases closed")
	fs.BoolVar(&o.processes, "processes", true, "latency and closed phases: also measure llmq as separate gateway and worker processes (go build)")
	fs.BoolVar(&o.r3, "r3", true, "also measure llmq on a 3-node NATS cluster (replicas 3) on 127.0.0.1: system llmq-r3 in the latency and closed phases, and the idle, memory and priority phases once more")
	fs.BoolVar(&o.verbose, "v", false, "show llmq's own log on stderr: errors of the in-process parts, warnings and errors of the processes")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "bound on the whole run")
	fs.DurationVar(&o.parkAfter, "park-after", time.Second, "every llmq gateway's LLMQ_PARK_AFTER (its default is 1s; 0 = never park)")

	fs.IntVar(&rate, "rate", 1000, "latency: open-loop requests per second")
	fs.DurationVar(&duration, "duration", 10*time.Second, "latency: duration of one measurement")
	fs.IntVar(&o.latency.Runs, "runs", 5, "latency: runs of every system; figures are medians")
	fs.DurationVar(&o.latency.Warmup, "warmup", 2*time.Second, "latency and closed: unmeasured load before the first run")
	fs.DurationVar(&o.latency.UpstreamLatency, "upstream-latency", 50*time.Millisecond, "latency: fake upstream latency")
	fs.IntVar(&o.latency.Workers, "workers", 128, "latency and closed: llmq worker slots")
	fs.StringVar(&o.latency.CPUProfile, "cpuprofile", "", "write a CPU profile of this process during the first in-process llmq run of the latency phase")

	fs.IntVar(&clients, "clients", 64, "closed: concurrent clients")
	fs.DurationVar(&closedDuration, "closed-duration", 10*time.Second, "closed: duration of one measurement")
	fs.IntVar(&o.closed.Runs, "closed-runs", 3, "closed: runs of every system; figures are medians")
	fs.StringVar(&o.closed.CPUProfile, "closed-cpuprofile", "", "write a CPU profile of this process during the first in-process llmq run of the closed phase")

	fs.IntVar(&o.priority.Slots, "priority-slots", 8, "priority: worker slots")
	fs.DurationVar(&o.priority.UpstreamLatency, "priority-upstream-latency", 100*time.Millisecond, "priority: fake upstream latency")
	fs.IntVar(&o.priority.Rate, "priority-rate", 160, "priority: offered requests per second (half band 0, half band 9)")
	fs.DurationVar(&o.priority.Duration, "priority-duration", 60*time.Second, "priority: how long load is offered")
	fs.StringVar(&o.priority.Dump, "priority-dump", "", "priority: write one CSV line per request to this file")
	fs.DurationVar(&o.priority.Grace, "priority-grace", 3*time.Second, "priority: how long answers are awaited after the last request")

	fs.IntVar(&o.memory.Requests, "memory-requests", 10000, "memory: requests waiting at once")
	fs.IntVar(&o.memory.Rate, "memory-rate", 2000, "memory: requests per second while filling the queue")
	fs.IntVar(&o.memory.DrainSlots, "memory-drain-slots", 64, "memory: worker slots that drain the queue")
	fs.StringVar(&o.memory.HeapProfile, "memory-heapprofile", "", "memory: write heap profiles to <prefix>-waiting.pprof and <prefix>-drained.pprof")

	fs.IntVar(&o.idle.Workers, "idle-workers", 2, "idle: worker processes")
	fs.IntVar(&o.idle.Slots, "idle-slots", 8, "idle: slots per worker process")
	fs.DurationVar(&o.idle.Duration, "idle-duration", 60*time.Second, "idle: measured time")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	short := func(name string, apply func()) {
		if o.short && !set[name] {
			apply()
		}
	}
	short("rate", func() { rate = 200 })
	short("duration", func() { duration = 2 * time.Second })
	short("runs", func() { o.latency.Runs = 1 })
	short("closed-runs", func() { o.closed.Runs = 1 })
	short("warmup", func() { o.latency.Warmup = 500 * time.Millisecond })
	short("workers", func() { o.latency.Workers = 32 })
	short("clients", func() { clients = 16 })
	short("closed-duration", func() { closedDuration = 2 * time.Second })
	short("priority-duration", func() { o.priority.Duration = 4 * time.Second })
	short("priority-grace", func() { o.priority.Grace = time.Second })
	short("memory-requests", func() { o.memory.Requests = 500 })
	short("idle-duration", func() { o.idle.Duration = 2 * time.Second })
	short("timeout", func() { o.timeout = 4 * time.Minute })

	o.phases = strings.Split(phases, ",")
	if closedOnly {
		o.phases = []string{"closed"}
	}
	for _, p := range o.phases {
		if !slices.Contains(allPhases, p) {
			return nil, fmt.Errorf("unknown phase %q; the phases are %s", p, strings.Join(allPhases, ", "))
		}
	}
	o.latency.Shape = load.Shape{Rate: rate, Duration: duration}
	o.latency.Processes = o.processes
	o.latency.R3 = o.r3

	o.closed.Shape = load.Shape{Clients: clients, Duration: closedDuration}
	o.closed.UpstreamLatency = 0 // maximum throughput: the upstream answers at once
	o.closed.Warmup = o.latency.Warmup
	o.closed.Workers = o.latency.Workers
	o.closed.Processes = o.processes
	o.closed.R3 = o.r3

	o.priority.Tolerance = time.Millisecond
	o.memory.Timeout = max(time.Minute, time.Duration(o.memory.Requests/max(o.memory.Rate, 1))*3*time.Second)
	o.idle.Settle = 3 * time.Second
	if o.short {
		o.idle.Settle = time.Second
	}
	return o, nil
}

// The configs of the R3 runs of the phases that run twice; files they write
// get "-r3" in their names.

func (o *options) idleR3() phase.IdleConfig {
	c := o.idle
	c.R3 = true
	return c
}

func (o *options) memoryR3() phase.MemoryConfig {
	c := o.memory
	c.R3 = true
	if c.HeapProfile != "" {
		c.HeapProfile += "-r3"
	}
	return c
}

func (o *options) priorityR3() phase.PriorityConfig {
	c := o.priority
	c.R3 = true
	if c.Dump != "" {
		ext := filepath.Ext(c.Dump)
		c.Dump = strings.TrimSuffix(c.Dump, ext) + "-r3" + ext
	}
	return c
}

// machine describes this machine in one line.
func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %.0f GB RAM", float64(kb)/(1<<20))
		}
	}
	return fmt.Sprintf("%d CPUs (%s)%s, %s %s/%s", runtime.NumCPU(), model, mem, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// loadAverage returns the 1-, 5- and 15-minute load averages of the machine,
// as /proc/loadavg has them, or "unknown".
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(data)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}
