// Command worker serves llmq's queue: it takes requests from NATS JetStream
// in strict priority order, calls the deployments and replies to the callers.
// Run as many as you like, on any machines. Settings: see .env.example.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kelseyhightower/envconfig"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "llmq worker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var env config.Env
	if err := envconfig.Process("LLMQ", &env); err != nil {
		return err
	}
	// SIGHUP reloads the config file (so does "llmqctl reload").
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return app.RunWorker(ctx, env, os.LookupEnv, os.Stderr, app.ReloadOn(hup))
}
