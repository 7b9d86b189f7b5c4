// Package ctl is llmqctl, the operator's command for a running llmq
// installation. It speaks to NATS with the same LLMQ_NATS_* settings and
// config file (LLMQ_CONFIG) as the workers, and creates no stream or
// consumer (app.Admin):
//
//	llmqctl status                      the queue as GET /v1/queue shows it
//	llmqctl dead list [--from SEQ] [--limit N]
//	llmqctl dead show [--body] ID       one dead letter, whole
//	llmqctl dead replay ID...           serve dead letters again
//	llmqctl dead purge (--all | ID...)  remove dead letters
//	llmqctl pause GROUP [--band N]      stop dispatching a model group (or one band of it)
//	llmqctl resume GROUP [--band N]     dispatch it again
//	llmqctl reload [--wait D] [--prefix P]  every gateway and worker reloads its config file
//
// Pause and resume write the pauses bucket (internal/pauses) that every
// worker process watches.
//
// A dead letter's ID is its sequence number in the dead-letter stream, as
// "dead list" shows it.
//
// Replay: a worker sends a request's answer to its caller and calls no
// provider for a request whose caller is gone, and the original caller of a
// dead letter got its error long ago. So llmqctl itself is the caller of a
// replayed request: it publishes the request again at its band and group
// (pkg/client, with a new request id, hence a new Nats-Msg-Id, and a fresh
// queue deadline of router_settings.timeout), waits for the answer and
// prints its outcome, not its body. A dead letter is removed once a worker
// has picked its replay up: from then on the request is either served or,
// failing again, dead-lettered anew by the worker. One that no worker picked
// up (queue deadline passed, llmqctl interrupted) is kept.
package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/config"
)

// Usage is the command's help text.
const Usage = `usage: llmqctl COMMAND

Commands:
  status                         requests waiting per band and model group, the
                                 deployments' use of their limits and cooldowns,
                                 the batches not over with their progress, and
                                 the number of dead letters
  dead list [--from ID] [--limit N]
                                 dead letters, oldest first, with their reason and age
  dead show [--body] ID          one dead letter: its headers and body size
                                 (--body: the body too)
  dead replay ID...              put dead letters back in the queue at their band
                                 and model group, wait for their answers and
                                 report them; served or failed again, a replayed
                                 letter is removed
  dead purge (--all | ID...)     remove dead letters
  pause GROUP [--band N]         every worker stops taking new requests of the
                                 model group (or of one band of it); they stay
                                 queued, their queue deadlines still running
  resume GROUP [--band N]        dispatch them again (without --band: every
                                 pause of the group)
  reload [--wait DURATION] [--prefix PREFIX]
                                 every gateway and worker process reloads its
                                 own config file (as on SIGHUP) and answers;
                                 prints the answers that came within --wait (5s)
                                 and fails if one process refused. PREFIX: the
                                 subject prefix, when LLMQ_CONFIG cannot say it

Settings: the LLMQ_NATS_* variables and LLMQ_CONFIG, as for cmd/worker
(see .env.example). IDs are the sequence numbers "dead list" shows.
`

// ErrUsage reports a command line llmqctl does not understand.
var ErrUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// opTimeout bounds each NATS operation of a command.
const opTimeout = 10 * time.Second

// Run runs the command in args (without the program name) and writes its
// output to out.
func Run(ctx context.Context, args []string, env config.Env, lookup func(string) (string, bool), out, logOut io.Writer) error {
	if len(args) == 0 {
		return usageErr("no command")
	}
	var cmd func(context.Context, *app.Admin) error
	switch args[0] {
	case "status":
		if len(args) > 1 {
			return usageErr("status takes no arguments")
		}
		cmd = func(ctx context.Context, a *app.Admin) error { return status(ctx, a, out) }
	case "dead":
		c, err := deadCommand(args[1:], out)
		if err != nil {
			return err
		}
		cmd = c
	case "pause", "resume":
		c, err := pauseCommand(args[0], args[1:], out)
		if err != nil {
			return err
		}
		cmd = c
	case "reload":
		// The processes judge their own config files: this one's may
		// have errors, and only its subject prefix is needed.
		c, prefix, err := reloadCommand(args[1:], out)
		if err != nil {
			return err
		}
		if prefix == "" {
			prefix = app.SubjectPrefix(env, lookup)
		}
		a, err := app.OpenAdminConn(env, prefix)
		if err != nil {
			return err
		}
		defer a.Close()
		return c(ctx, a)
	case "help", "-h", "--help":
		_, err := io.WriteString(out, Usage)
		return err
	default:
		return usageErr("unknown command %q", args[0])
	}
	a, err := app.OpenAdmin(ctx, env, lookup, logOut)
	if err != nil {
		return err
	}
	defer a.Close()
	return cmd(ctx, a)
}

// newFlags returns a flag set that reports errors to the caller instead of
// printing them.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parse parses args with fs, allowing flags after the positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageErr("%s: %v", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// age formats a duration for a terminal: 850ms, 4.2s, 3m12s, 5h3m, 2d4h.
func age(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	}
	days := d / (24 * time.Hour)
	return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
}
