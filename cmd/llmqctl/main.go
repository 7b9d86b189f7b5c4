// Command llmqctl is the operator's command for a running llmq installation:
// queue status and the dead-letter stream (list, show, replay, purge). It
// uses the same LLMQ_NATS_* settings and config file as the workers. Run
// "llmqctl help" for the commands; see internal/ctl.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kelseyhightower/envconfig"

	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx)
	switch {
	case errors.Is(err, ctl.ErrUsage):
		fmt.Fprintf(os.Stderr, "llmqctl: %v\n\n%s", err, ctl.Usage)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "llmqctl:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var env config.Env
	if err := envconfig.Process("LLMQ", &env); err != nil {
		return err
	}
	return ctl.Run(ctx, os.Args[1:], env, os.LookupEnv, os.Stdout, os.Stderr)
}
