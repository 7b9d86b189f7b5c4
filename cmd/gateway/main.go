// Command gateway is llmq's OpenAI-compatible HTTP front. With no
// LLMQ_NATS_URL it embeds a JetStream server and runs workers in-process, so
// this one command gives a working system. Settings: see .env.example.
//
// "gateway -check config.yaml" checks a config file and exits.
package main

import (
	"context"
	"flag"
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
	check := flag.String("check", "", "check the config `file` without starting anything: print its errors, warnings and deployments; exit 1 on errors")
	flag.Parse()
	if *check != "" {
		return app.CheckConfig(os.Stdout, *check, os.LookupEnv)
	}
	var env config.Env
	if err := envconfig.Process("LLMQ", &env); err != nil {
		return err
	}
	// SIGHUP reloads the config file (so does "llmqctl reload").
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return app.RunGateway(ctx, env, os.LookupEnv, os.Stderr, app.ReloadOn(hup))
}
