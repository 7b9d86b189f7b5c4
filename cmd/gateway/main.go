// Command gateway is llmq's OpenAI-compatible HTTP front. With no
// LLMQ_NATS_URL it embeds a JetStream server and runs workers in-process, so
// this one command gives a working system. Settings: see .env.example.
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
		fmt.Fprintln(os.Stderr, "llmq gateway:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var env config.Env
	if err := envconfig.Process("LLMQ", &env); err != nil {
		return err
	}
	return app.RunGateway(ctx, env, os.LookupEnv, os.Stderr)
}
