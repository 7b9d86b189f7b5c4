package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/reload"
)

// ErrReloadRefused reports that at least one process refused the reload.
var ErrReloadRefused = errors.New("a process refused the reload")

// reloadCommand parses "reload [--wait D] [--prefix P]". It returns the
// subject prefix to ask under ("" for the config file's).
func reloadCommand(args []string, out io.Writer) (func(context.Context, *app.Admin) error, string, error) {
	fs := newFlags("reload")
	wait := fs.Duration("wait", 5*time.Second, "how long to collect answers")
	prefix := fs.String("prefix", "", "the installation's subject prefix")
	pos, err := parse(fs, args)
	if err != nil {
		return nil, "", err
	}
	if len(pos) != 0 || *wait <= 0 {
		return nil, "", usageErr("reload [--wait DURATION] [--prefix PREFIX]")
	}
	return func(ctx context.Context, a *app.Admin) error {
		ctx, cancel := a.Bound(ctx, *wait+opTimeout)
		defer cancel()
		results, err := reload.Ask(ctx, a.NC, a.Subjects.Reload(), *wait)
		if err != nil {
			return a.Explain(err)
		}
		refused := 0
		for _, r := range results {
			if r.OK {
				fmt.Fprintf(out, "%s: reloaded: %d deployments in model groups %s\n", r.Process, r.Deployments, strings.Join(r.Groups, ", "))
				continue
			}
			refused++
			fmt.Fprintf(out, "%s: REFUSED, the running configuration is kept:\n  %s\n", r.Process, strings.ReplaceAll(r.Error, "\n", "\n  "))
		}
		fmt.Fprintf(out, "%d processes answered within %s, %d refused\n", len(results), *wait, refused)
		if refused > 0 {
			return fmt.Errorf("%w: %d of %d", ErrReloadRefused, refused, len(results))
		}
		return nil
	}, *prefix, nil
}
