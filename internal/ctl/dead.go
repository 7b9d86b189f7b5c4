package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/deadletter"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// deadCommand parses "dead ..." and returns the command to run.
func deadCommand(args []string, out io.Writer) (func(context.Context, *app.Admin) error, error) {
	if len(args) == 0 {
		return nil, usageErr("dead needs a subcommand: list, show, replay or purge")
	}
	switch args[0] {
	case "list":
		fs := newFlags("dead list")
		from := fs.Uint64("from", 1, "first ID to list")
		limit := fs.Int("limit", 100, "most letters to list")
		pos, err := parse(fs, args[1:])
		if err != nil {
			return nil, err
		}
		if len(pos) > 0 || *limit < 1 {
			return nil, usageErr("dead list [--from ID] [--limit N] (N at least 1)")
		}
		return func(ctx context.Context, a *app.Admin) error { return deadList(ctx, a, out, *from, *limit) }, nil
	case "show":
		fs := newFlags("dead show")
		body := fs.Bool("body", false, "print the request body too")
		pos, err := parse(fs, args[1:])
		if err != nil {
			return nil, err
		}
		if len(pos) != 1 {
			return nil, usageErr("dead show [--body] ID")
		}
		seq, err := deadletter.ParseID(pos[0])
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, a *app.Admin) error { return deadShow(ctx, a, out, seq, *body) }, nil
	case "replay":
		seqs, err := parseIDs(args[1:])
		if err != nil {
			return nil, err
		}
		if len(seqs) == 0 {
			return nil, usageErr("dead replay ID...")
		}
		return func(ctx context.Context, a *app.Admin) error { return deadReplay(ctx, a, out, seqs) }, nil
	case "purge":
		fs := newFlags("dead purge")
		all := fs.Bool("all", false, "remove every dead letter")
		pos, err := parse(fs, args[1:])
		if err != nil {
			return nil, err
		}
		seqs, err := parseIDs(pos)
		if err != nil {
			return nil, err
		}
		if *all == (len(seqs) > 0) {
			return nil, usageErr("dead purge needs either --all or the IDs to remove")
		}
		return func(ctx context.Context, a *app.Admin) error { return deadPurge(ctx, a, out, seqs) }, nil
	}
	return nil, usageErr("unknown dead subcommand %q (list, show, replay or purge)", args[0])
}

func parseIDs(args []string) ([]uint64, error) {
	var seqs []uint64
	for _, s := range args {
		if strings.HasPrefix(s, "-") {
			return nil, usageErr("unknown flag %s", s)
		}
		seq, err := deadletter.ParseID(s)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(seqs, seq) {
			seqs = append(seqs, seq)
		}
	}
	return seqs, nil
}

func openDead(ctx context.Context, a *app.Admin) (*deadletter.Stream, error) {
	d, err := deadletter.Open(ctx, a.JS, a.Subjects)
	return d, a.Explain(err)
}

// oneLine shortens a reason to one line of at most n bytes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}

func bandText(l deadletter.Letter) string {
	if l.Band < 0 {
		return "-"
	}
	return fmt.Sprint(l.Band)
}

func deadList(ctx context.Context, a *app.Admin, out io.Writer, from uint64, limit int) error {
	ctx, cancel := a.Bound(ctx, opTimeout+time.Duration(limit)*10*time.Millisecond)
	defer cancel()
	d, err := openDead(ctx, a)
	if err != nil {
		return err
	}
	st, err := d.State(ctx)
	if err != nil {
		return a.Explain(err)
	}
	letters, more, err := d.List(ctx, from, limit)
	if err != nil {
		return a.Explain(err)
	}
	fmt.Fprintf(out, "Dead letters in %s: %d\n", a.Subjects.DeadLetterStream(), st.Count)
	if len(letters) == 0 {
		return nil
	}
	now := time.Now()
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tBAND\tGROUP\tREQUEST ID\tREASON")
	for _, l := range letters {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", l.Seq, age(now.Sub(l.Time)), bandText(l), l.Group, l.RequestID, oneLine(l.Reason, 100))
	}
	_ = tw.Flush()
	if more {
		fmt.Fprintf(out, "more follow: llmqctl dead list --from %d\n", letters[len(letters)-1].Seq+1)
	}
	return nil
}

func deadShow(ctx context.Context, a *app.Admin, out io.Writer, seq uint64, body bool) error {
	ctx, cancel := a.Bound(ctx, opTimeout)
	defer cancel()
	d, err := openDead(ctx, a)
	if err != nil {
		return err
	}
	l, err := d.Get(ctx, seq)
	if err != nil {
		return a.Explain(err)
	}
	fmt.Fprintf(out, "ID:         %d\n", l.Seq)
	fmt.Fprintf(out, "Subject:    %s\n", l.Subject)
	fmt.Fprintf(out, "Band:       %s\n", bandText(l))
	fmt.Fprintf(out, "Group:      %s\n", l.Group)
	fmt.Fprintf(out, "Dead since: %s (%s ago)\n", l.Time.UTC().Format(time.RFC3339Nano), age(time.Since(l.Time)))
	fmt.Fprintf(out, "Reason:     %s\n", l.Reason)
	fmt.Fprintf(out, "Body:       %d bytes\n", len(l.Data))
	if _, err := l.Request(a.Subjects); err != nil {
		fmt.Fprintf(out, "Replayable: no: %v\n", err)
	} else if !slices.Contains(a.Groups, l.Group) {
		fmt.Fprintf(out, "Replayable: no: the model group %q is not in the config\n", l.Group)
	} else {
		fmt.Fprintln(out, "Replayable: yes")
	}
	fmt.Fprintln(out, "Headers:")
	names := make([]string, 0, len(l.Header))
	for k := range l.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if k == messages.HeaderDeadReason {
			continue // shown above
		}
		for _, v := range l.Header[k] {
			fmt.Fprintf(out, "  %s: %s\n", k, v)
		}
	}
	if body {
		fmt.Fprintln(out, "Body:")
		fmt.Fprintf(out, "%s\n", l.Data)
	}
	return nil
}

// replayable is a dead letter checked for replay.
type replayable struct {
	letter deadletter.Letter
	req    *messages.Request
}

// replayResult is how one replay ended.
type replayResult struct {
	id       string // the replayed request's id
	resp     *client.Response
	info     client.Result
	err      error
	chunks   int
	removed  bool
	delError error
}

// maxConcurrentReplays bounds the replays in flight at once.
const maxConcurrentReplays = 32

func deadReplay(ctx context.Context, a *app.Admin, out io.Writer, seqs []uint64) error {
	octx, cancel := a.Bound(ctx, opTimeout)
	d, err := openDead(octx, a)
	if err != nil {
		cancel()
		return err
	}
	// Check every letter first: nothing is replayed unless all can be.
	var todo []replayable
	var errs []error
	for _, seq := range seqs {
		l, err := d.Get(octx, seq)
		if err != nil {
			errs = append(errs, a.Explain(err))
			continue
		}
		req, err := l.Request(a.Subjects)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("dead letter %d cannot be replayed: %w (remove it with llmqctl dead purge %d)", seq, err, seq))
		case !slices.Contains(a.Groups, req.Group):
			errs = append(errs, fmt.Errorf("dead letter %d cannot be replayed: its model group %q is not in the config", seq, req.Group))
		default:
			todo = append(todo, replayable{letter: l, req: req})
		}
	}
	cancel()
	if len(errs) > 0 {
		return fmt.Errorf("nothing was replayed:\n%w", errors.Join(errs...))
	}
	cl, err := a.Client()
	if err != nil {
		return err
	}
	defer cl.Close()

	results := make([]replayResult, len(todo))
	sem := make(chan struct{}, maxConcurrentReplays)
	var wg sync.WaitGroup
	for i, r := range todo {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i] = replay(ctx, a, cl, d, r)
		}()
	}
	wg.Wait()

	failed := 0
	for i, r := range todo {
		res := results[i]
		l := r.letter
		fmt.Fprintf(out, "dead letter %d (band %d, group %s) replayed as request %s: ", l.Seq, l.Band, l.Group, res.id)
		switch {
		case res.err == nil:
			fmt.Fprintf(out, "served by %s after %s in the queue", res.resp.Deployment, age(res.info.QueueWait))
			if r.req.Stream {
				fmt.Fprintf(out, " (%d stream events)", res.chunks)
			}
		default:
			failed++
			fmt.Fprintf(out, "%s: %s", messages.OutcomeOf(res.err), oneLine(res.err.Error(), 200))
			if res.info.Picked {
				fmt.Fprint(out, " (it failed after a worker picked it up: it is a new dead letter)")
			}
		}
		switch {
		case res.removed:
			fmt.Fprintf(out, "; dead letter %d removed\n", l.Seq)
		case res.delError != nil:
			failed++
			fmt.Fprintf(out, "; dead letter %d could not be removed: %v\n", l.Seq, res.delError)
		default:
			fmt.Fprintf(out, "; no worker picked it up, dead letter %d kept\n", l.Seq)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d replays were not served", failed, len(todo))
	}
	return nil
}

// replay submits r's request again as a new request and waits for its
// answer; once a worker picked it up, the dead letter is removed.
func replay(ctx context.Context, a *app.Admin, cl *client.Client, d *deadletter.Stream, r replayable) replayResult {
	now := time.Now()
	req := &client.Request{
		Kind: r.req.Kind, Group: r.req.Group, Priority: r.req.Priority, Tenant: r.req.Tenant, Body: r.req.Body,
		Deadline: now.Add(a.QueueTimeout),
	}
	if a.AnswerTimeout > 0 {
		req.AnswerDeadline = req.Deadline.Add(a.AnswerTimeout)
	}
	var res replayResult
	if r.req.Stream {
		req.OnChunk = func([]byte) error { res.chunks++; return nil }
	}
	res.resp, res.info, res.err = cl.Do(ctx, req)
	res.id = req.ID
	if res.info.Picked {
		dctx, cancel := a.Bound(context.WithoutCancel(ctx), opTimeout)
		defer cancel()
		if err := d.Delete(dctx, r.letter.Seq); err != nil && !errors.Is(err, deadletter.ErrNotFound) {
			res.delError = a.Explain(err)
		} else {
			res.removed = true
		}
	}
	return res
}

func deadPurge(ctx context.Context, a *app.Admin, out io.Writer, seqs []uint64) error {
	ctx, cancel := a.Bound(ctx, opTimeout)
	defer cancel()
	d, err := openDead(ctx, a)
	if err != nil {
		return err
	}
	if len(seqs) == 0 {
		n, err := d.Purge(ctx)
		if err != nil {
			return a.Explain(err)
		}
		fmt.Fprintf(out, "removed %d dead letters\n", n)
		return nil
	}
	var errs []error
	removed := 0
	for _, seq := range seqs {
		if err := d.Delete(ctx, seq); err != nil {
			errs = append(errs, a.Explain(err))
			continue
		}
		removed++
	}
	fmt.Fprintf(out, "removed %d dead letters\n", removed)
	return errors.Join(errs...)
}
