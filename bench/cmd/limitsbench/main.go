// Command limitsbench measures how exactly llmq's worker pool keeps a deployment
// at its rpm and tpm limits (issue 3): a deployment limited to -rpm requests
// (then -tpm tokens) per minute is offered -offer times that, open loop, for
// -duration, and served by each of the -slots worker-slot counts spread over
// -processes real worker processes (this program started again as "limitsbench
// worker", each with its own NATS connection, running app.RunWorker). The
// configurations run one after the other, each on a fresh NATS server and a
// fresh fake upstream (internal/fakeupstream, in this process).
//
// Requests go in through pkg/client, as an internal service would send them,
// with request ids of our own, so that every request can be followed from the
// queue (the stream's wake-up hint, received when the message is stored) to
// the upstream (the fake records when each call arrives). Priorities are
// uniform over 0..9, one per band of the default band table.
//
// It prints, per configuration:
//
//   - achieved ÷ configured: what reached the upstream (calls, or the
//     total_tokens the fake reported for them) from one period after the
//     first request was offered until the offer stopped, divided by the limit
//     times that span in periods. The first period is left out: it is the
//     warm-up, in which the limiter's pacing lets a burst of up to Period/60
//     of idle time go out at once.
//   - the busiest sliding window of one period at the upstream ÷ the limit,
//     over every call of the run (warm-up and drain included).
//   - priority inversions: dispatches of a request of priority p while a
//     request of strictly lower priority number, enqueued earlier, was still
//     waiting. "Dispatched" is the arrival at the upstream; "enqueued" is when
//     the stream's wake-up hint for it reached this process. The count is
//     given strict and with a tolerance (-tolerance): a request enqueued less
//     than the tolerance before the dispatch does not count, since the worker
//     chose the dispatched request a few milliseconds before its call reached
//     the upstream (reservation, the caller check, the HTTP request).
//
// Usage:
//
//	go run ./bench/cmd/limitsbench                  # full run: 60 s period, 3 min per configuration
//	go run ./bench/cmd/limitsbench -short           # a quick check (< 2 min), short period
//	go run ./bench/cmd/limitsbench -runs rpm -slots 4 -duration 2m
//
// The full figures use the real 60 s period; -period is only honoured with
// -short. Progress goes to stderr, the markdown table to stdout.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if len(os.Args) > 1 && os.Args[1] == workerCommand {
		err = runWorker(ctx)
	} else {
		err = run(ctx, os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "limits:", err)
		os.Exit(1)
	}
}

// options are the parsed flags.
type options struct {
	short     bool
	runs      []string
	rpm, tpm  int64
	slots     []int
	processes int
	duration  time.Duration
	period    time.Duration
	offer     float64
	latency   time.Duration
	tolerance time.Duration
	verbose   bool
}

func parseOptions(args []string) (*options, error) {
	fs := flag.NewFlagSet("limits", flag.ContinueOnError)
	o := &options{}
	var runs, slots string
	fs.BoolVar(&o.short, "short", false, "short period and duration: a check that the harness works in under two minutes, not the figures")
	fs.StringVar(&runs, "runs", "rpm,tpm", "which limits to measure, in order: rpm, tpm")
	fs.Int64Var(&o.rpm, "rpm", 600, "the deployment's rpm (requests per minute; scaled to the period)")
	fs.Int64Var(&o.tpm, "tpm", 60000, "the deployment's tpm in the tpm run (tokens per minute; scaled to the period)")
	fs.StringVar(&slots, "slots", "1,4,16", "comma-separated total worker slots of each configuration")
	fs.IntVar(&o.processes, "processes", 2, "worker processes the slots are spread over (fewer when there are fewer slots)")
	fs.DurationVar(&o.duration, "duration", 3*time.Minute, "how long the load is offered per configuration (-short: 12s)")
	fs.DurationVar(&o.period, "period", time.Minute, "llmq_settings.limits_period; only with -short (default then 4s)")
	fs.Float64Var(&o.offer, "offer", 3, "offered load as a multiple of the limit")
	fs.DurationVar(&o.latency, "latency", 50*time.Millisecond, "the fake upstream's answer latency")
	fs.DurationVar(&o.tolerance, "tolerance", 25*time.Millisecond, "priority inversions: ignore requests enqueued less than this before the dispatch")
	fs.BoolVar(&o.verbose, "v", false, "show the worker processes' warnings")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.short {
		if !set["duration"] {
			o.duration = 12 * time.Second
		}
		if !set["period"] {
			o.period = 4 * time.Second
		}
	} else if o.period != time.Minute {
		return nil, fmt.Errorf("-period %v: the full figures use the real 60 s period; a shorter one only with -short", o.period)
	}
	for _, r := range strings.Split(runs, ",") {
		switch r = strings.TrimSpace(r); r {
		case "rpm", "tpm":
			o.runs = append(o.runs, r)
		default:
			return nil, fmt.Errorf("-runs: unknown run %q (rpm, tpm)", r)
		}
	}
	for _, s := range strings.Split(slots, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-slots: %q is not a positive number", s)
		}
		o.slots = append(o.slots, n)
	}
	switch {
	case o.processes < 1:
		return nil, fmt.Errorf("-processes must be at least 1")
	case o.duration <= o.period:
		return nil, fmt.Errorf("-duration %v must be longer than the period %v (the first period is warm-up)", o.duration, o.period)
	case o.period < time.Second:
		return nil, fmt.Errorf("-period must be at least 1s (llmq_settings.limits_period)")
	case o.offer <= 0:
		return nil, fmt.Errorf("-offer must be positive")
	case o.rpm < 1 || o.tpm < 1:
		return nil, fmt.Errorf("-rpm and -tpm must be positive")
	}
	return o, nil
}

func run(ctx context.Context, args []string) error {
	o, err := parseOptions(args)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this program to start worker processes: %w", err)
	}
	var results []*result
	for _, kind := range o.runs {
		for _, slots := range o.slots {
			c := config{
				kind: kind, limit: o.rpm, slots: slots, processes: min(o.processes, slots),
				period: o.period, duration: o.duration, offer: o.offer, latency: o.latency,
				tolerance: o.tolerance, verbose: o.verbose,
			}
			if kind == "tpm" {
				c.limit = o.tpm
			}
			fmt.Fprintf(os.Stderr, "limits: %s %d/min, %d slots over %d processes, period %v, offered %.1fx for %v ...\n",
				kind, c.limit, slots, c.processes, c.period, c.offer, c.duration)
			r, err := runConfig(ctx, exe, c)
			if err != nil {
				return fmt.Errorf("%s with %d slots: %w", kind, slots, err)
			}
			fmt.Fprintf(os.Stderr, "limits:   %s\n", r.summary())
			results = append(results, r)
		}
	}
	printTable(os.Stdout, o, results)
	return nil
}

func printTable(w *os.File, o *options, results []*result) {
	mode := "full"
	if o.short {
		mode = "-short (NOT the real figures)"
	}
	fmt.Fprintf(w, "Mode: %s; limits_period %v; load offered %.1fx the limit for %v per configuration; fake upstream latency %v; %d CPUs (%s/%s).\n\n",
		mode, o.period, o.offer, o.duration, o.latency, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintln(w, "| limit | worker slots (processes × slots) | offered | upstream calls | achieved ÷ configured | busiest window ÷ limit | priority inversions: strict / beyond tolerance, of dispatches | requests overtaken |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		fmt.Fprintf(w, "| %s %d/min | %d (%s) | %.1f req/s | %d | %.3f | %.3f (%d of %d) | %d / %d of %d | %d |\n",
			r.cfg.kind, r.cfg.limit, r.cfg.slots, r.layout(), r.offeredRate, r.calls,
			r.achieved, float64(r.busiest)/float64(r.perPeriod), r.busiest, r.perPeriod,
			r.inversionsStrict, r.inversionsTol, r.dispatches, r.overtaken)
	}
	fmt.Fprintf(w, "\nAchieved: upstream %s from one period after the first offer to the end of the offer, ÷ (limit × that span in periods). "+
		"Busiest window: the largest sum over any sliding window of one period at the upstream, whole run. "+
		"Inversions: dispatches (arrival at the upstream) of priority p while an earlier-enqueued request of priority < p still waited; tolerance %v; "+
		"requests overtaken: the distinct requests those dispatches (beyond the tolerance) went ahead of.\n",
		"calls (rpm) or reported total_tokens (tpm)", o.tolerance)
}
