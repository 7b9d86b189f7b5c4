// Command llmqbench measures llmq on this machine in one run: added latency
// against calling a fake upstream directly and through a plain HTTP hop (open
// loop), maximum throughput (closed loop), CPU per request, priority
// separation under overload, the memory of waiting requests and the CPU of
// idle workers. It prints a markdown summary on stdout and its progress on
// stderr. See BENCHMARKS.md.
//
//	go run ./bench/cmd/llmqbench           # full run (about ten minutes)
//	go run ./bench/cmd/llmqbench -short    # a quick check that the harness works
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/llmq/llmq/bench/internal/load"
	"github.com/llmq/llmq/bench/internal/system"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run := run
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case holdCommand:
			run = hold
		case natsNodeCommand:
			run = natsNode
		}
	}
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "llmqbench:", err)
		os.Exit(1)
	}
}

// holdCommand is the hidden subcommand the memory phase runs as a child
// process: it sends requests that wait in the queue, so that their client
// side does not count in the gateway process's heap (nor its descriptors).
const holdCommand = "hold"

func hold(ctx context.Context, args []string) error {
	var url string
	var n, rate int
	fs := newFlagSet(holdCommand)
	fs.StringVar(&url, "url", "", "chat completions URL")
	fs.IntVar(&n, "n", 1, "requests")
	fs.IntVar(&rate, "rate", 1000, "requests per second")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	res, err := load.Hold(ctx, url, system.ChatBody(-1), n, rate)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// natsNodeCommand is the hidden subcommand that runs one node of the 3-node
// NATS cluster the -r3 measurements use, as its own process.
const natsNodeCommand = "nats-node"

func natsNode(ctx context.Context, args []string) error {
	return system.RunNode(ctx, args[1:], os.Stdin, os.Stderr)
}
