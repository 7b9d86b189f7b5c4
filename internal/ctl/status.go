package ctl

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/queuestatus"
)

func status(ctx context.Context, a *app.Admin, out io.Writer) error {
	st, err := a.Status(ctx, time.Now())
	if err != nil {
		return fmt.Errorf("read the queue: %w", err)
	}
	var batchesErr error
	st.Batches, batchesErr = a.Batches(ctx)
	writeStatus(out, st, time.Now(), a.LimitsErr, batchesErr)
	return nil
}

// writeStatus prints st, as of now, as tables.
func writeStatus(out io.Writer, st *queuestatus.Status, now time.Time, limitsErr, batchesErr error) {
	fmt.Fprintf(out, "Queue %s: %d requests (waiting, or being served)\n", st.Stream, st.Total)
	if len(st.Queues) > 0 {
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "BAND\tGROUP\tREQUESTS\tOLDEST\tTENANTS")
		for _, q := range st.Queues {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\n", q.Band, q.Group, q.Depth, age(time.Duration(q.OldestWaitMs)*time.Millisecond), tenants(q.Tenants))
		}
		_ = tw.Flush()
	}
	fmt.Fprintln(out)
	switch {
	case limitsErr != nil:
		fmt.Fprintf(out, "Deployments: the shared limiter state cannot be read: %v\n", limitsErr)
	case len(st.Deployments) > 0:
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "DEPLOYMENT\tGROUP\tIN FLIGHT\tRPM\tTPM\tCOOLDOWN")
		for _, d := range st.Deployments {
			cool := "-"
			if d.CooldownMs > 0 {
				cool = age(time.Duration(d.CooldownMs)*time.Millisecond) + " left"
				if d.CooldownReason != "" {
					cool += " (" + d.CooldownReason + ")"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Group,
				used(int64(d.InFlight), int64(d.MaxParallel)), used(d.RequestsUsed, d.RPM), used(d.TokensUsed, d.TPM), cool)
		}
		_ = tw.Flush()
	}
	fmt.Fprintln(out)
	writeBatches(out, st.Batches, now, batchesErr)
	fmt.Fprintln(out)
	if len(st.Paused) > 0 {
		fmt.Fprintf(out, "Paused: %s (llmqctl resume GROUP)\n\n", pausedList(st.Paused))
	}
	if st.DeadLetters == nil {
		fmt.Fprintln(out, "Dead letters: the dead-letter stream cannot be read")
		return
	}
	fmt.Fprintf(out, "Dead letters: %d", st.DeadLetters.Count)
	if st.DeadLetters.Count > 0 {
		fmt.Fprint(out, " (llmqctl dead list)")
	}
	fmt.Fprintln(out)
}

// writeBatches prints the batches that are not over, with their progress.
func writeBatches(out io.Writer, bs []queuestatus.Batch, now time.Time, err error) {
	if err != nil {
		fmt.Fprintf(out, "Batches: the batches bucket cannot be read: %v\n", err)
		return
	}
	fmt.Fprintf(out, "Batches: %d not over\n", len(bs))
	if len(bs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BATCH\tSTATUS\tBAND\tCOMPLETED\tFAILED\tTOTAL\tTENANT\tEXPIRES IN")
	for _, b := range bs {
		tenant := b.Tenant
		if tenant == "" {
			tenant = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", b.ID, b.Status, b.Band, b.Completed, b.Failed, b.Total, tenant,
			age(max(0, time.Unix(b.ExpiresAt, 0).Sub(now))))
	}
	_ = tw.Flush()
}

// tenants formats who waits in a queue: "acme 3, anonymous 1".
func tenants(ts []queuestatus.TenantQueue) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = t.Tenant + " " + strconv.FormatUint(t.Depth, 10)
	}
	return strings.Join(parts, ", ")
}

// used formats a use against its limit: "3/60", or "3/-" without a limit.
func used(n, limit int64) string {
	if limit <= 0 {
		return strconv.FormatInt(n, 10) + "/-"
	}
	return strconv.FormatInt(n, 10) + "/" + strconv.FormatInt(limit, 10)
}
