package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/pauses"
)

// pauseCommand parses "pause GROUP [--band N]" or "resume GROUP [--band N]".
func pauseCommand(verb string, args []string, out io.Writer) (func(context.Context, *app.Admin) error, error) {
	fs := newFlags(verb)
	band := fs.Int("band", pauses.AllBands, "only this band")
	pos, err := parse(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) != 1 || (*band < 0 && *band != pauses.AllBands) {
		return nil, usageErr("%s GROUP [--band N]", verb)
	}
	group := pos[0]
	return func(ctx context.Context, a *app.Admin) error {
		if !slices.Contains(a.Groups, group) {
			return fmt.Errorf("unknown model group %q; the config has: %s", group, strings.Join(a.Groups, ", "))
		}
		if *band >= a.Bands.Count() {
			return fmt.Errorf("band %d does not exist: the bands are 0 to %d", *band, a.Bands.Count()-1)
		}
		if a.Pauses == nil {
			return fmt.Errorf("the pauses bucket %s cannot be opened: %w", a.Subjects.PausesBucket(), a.PausesErr)
		}
		ctx, cancel := a.Bound(ctx, opTimeout)
		defer cancel()
		what := pauses.Pause{Group: group, Band: *band}.String()
		if *band == pauses.AllBands {
			what += " (every band)"
		}
		if verb == "pause" {
			if err := a.Pauses.Pause(ctx, group, *band, time.Now()); err != nil {
				return a.Explain(err)
			}
			fmt.Fprintf(out, "paused %s: workers take no new request of it; its requests stay queued until their deadline (llmqctl resume %s)\n", what, group)
			return nil
		}
		gone, err := a.Pauses.Resume(ctx, group, *band)
		if errors.Is(err, pauses.ErrNotPaused) {
			if l := pausedList(a.Pauses.List()); l != "" {
				return fmt.Errorf("%w (paused: %s)", err, l)
			}
			return err
		}
		if err != nil {
			return a.Explain(err)
		}
		fmt.Fprintf(out, "resumed %s\n", pausedList(gone))
		if left := pausedList(filter(a.Pauses, group, gone)); left != "" && *band != pauses.AllBands {
			fmt.Fprintf(out, "still paused: %s\n", left)
		}
		return nil
	}, nil
}

// filter returns the pauses of group still in the mirror, less any that
// were just removed (the mirror may not have seen the removal yet).
func filter(ps *pauses.Set, group string, gone []pauses.Pause) []pauses.Pause {
	var out []pauses.Pause
	for _, p := range ps.List() {
		if p.Group == group && !slices.ContainsFunc(gone, func(g pauses.Pause) bool { return g.Band == p.Band }) {
			out = append(out, p)
		}
	}
	return out
}

// pausedList names pauses for a line of output.
func pausedList(ps []pauses.Pause) string {
	var names []string
	for _, p := range ps {
		n := p.String()
		if p.Band == pauses.AllBands {
			n += " (every band)"
		}
		names = append(names, n)
	}
	return strings.Join(names, ", ")
}
