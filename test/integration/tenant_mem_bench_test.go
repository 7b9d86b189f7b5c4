package integration

// Issue 14's memory figure: what many tenants cost the NATS server and the
// worker, against one tenant sending as many requests, in one run. Run with
//
//	LLMQ_BENCH_TENANTS=10000 go test -run '^$' -bench BenchmarkTenantsMemory -benchtime 1x ./test/integration/
//
// (without the variable 500 requests and tenants: enough for CI to keep it
// working, not for the figures).
// Each case starts its own processes on loopback: a nats-server (built at
// go.mod's version, JetStream, store in a temporary directory) and a worker
// (cmd/worker, 16 slots). A fake upstream that answers at once and a
// pkg/client submitting with 256 requests outstanding, until every request
// was answered, run in this process, so neither counts in the two
// processes' memory. Memory is /proc/<pid>/status: VmRSS when idle (after
// one request), VmHWM (the peak resident set, start-up included) after the
// last answer, and VmRSS settleAfter it.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// tenantsMemOutstanding is how many requests the client keeps outstanding.
const tenantsMemOutstanding = 256

// tenantsMemSettle is how long after the last answer the settled memory is
// read (the Go runtime returns freed memory to the system gradually: this
// is an upper bound of what stays).
const tenantsMemSettle = 5 * time.Second

// benchTenants is LLMQ_BENCH_TENANTS, or 500.
func benchTenants(b *testing.B) int { return benchEnv(b, "LLMQ_BENCH_TENANTS", 500, "tenants") }

// procMem is a process's resident set now (VmRSS) and at its peak (VmHWM),
// in bytes.
type procMem struct{ rss, hwm int64 }

func readProcMem(b *testing.B, p *relProc) procMem {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		b.Fatalf("read the memory of process %d: %v", p.cmd.Process.Pid, err)
	}
	var m procMem
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var kb int64
		if _, err := fmt.Sscanf(sc.Text(), "VmRSS: %d kB", &kb); err == nil {
			m.rss = kb << 10
		}
		if _, err := fmt.Sscanf(sc.Text(), "VmHWM: %d kB", &kb); err == nil {
			m.hwm = kb << 10
		}
	}
	if m.rss == 0 || m.hwm == 0 {
		b.Fatalf("process %d: no VmRSS or VmHWM in /proc/<pid>/status", p.cmd.Process.Pid)
	}
	return m
}

func mb(n int64) float64 { return float64(n) / (1 << 20) }

// BenchmarkTenantsMemory reports, for one tenant and for
// LLMQ_BENCH_TENANTS tenants of one request each (the same number of
// requests), the NATS server's and the worker's resident memory and the
// request stream's consumers. Use -benchtime 1x.
func BenchmarkTenantsMemory(b *testing.B) {
	n := benchTenants(b)
	bin := relBuildAll(b, relNATSServerPkg, "github.com/llmq/llmq/cmd/worker")
	for _, tt := range []struct {
		name   string
		tenant func(i int) string
	}{
		{"1-tenant", func(int) string { return "only-tenant" }},
		{strconv.Itoa(n) + "-tenants", func(i int) string { return "customer-" + strconv.Itoa(i) }},
	} {
		b.Run(tt.name, func(b *testing.B) {
			for b.Loop() {
				tenantsMemCase(b, bin, n, tt.tenant)
			}
		})
	}
}

// tenantsMemCase runs one case: n requests, request i for tenant(i).
func tenantsMemCase(b *testing.B, bin string, n int, tenant func(int) string) {
	ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
	defer cancel()
	dir := b.TempDir()
	port := relFreePorts(b, 1)[0]
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	natsProc := relStartProc(b, filepath.Join(bin, "nats-server"), nil,
		"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", filepath.Join(dir, "store"), "-l", filepath.Join(dir, "nats.log"))
	fake := fakeupstream.New(fakeupstream.Options{Reply: fakeReply})
	b.Cleanup(fake.Close)
	cfg := writeYAMLConfig(b, relConfig{ModelList: []deployment{fakeDeployment("shared", "shared-0", fake, 0)}})

	var nc *nats.Conn
	if !relPoll(relWait, func() bool {
		var err error
		nc, err = nats.Connect(url, nats.Name("llmq-bench-client"))
		return err == nil
	}) {
		b.Fatalf("nats-server on %s does not accept clients", url)
	}
	b.Cleanup(nc.Close)
	vars := relWorkerVars(cfg, url, 16)
	vars["LLMQ_LOG_LEVEL"] = "warn"
	workerProc := relStartProc(b, filepath.Join(bin, "worker"), vars)
	cl, err := client.New(nc, client.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cl.Close() })
	do := func(tenant, content string) error {
		rctx, rcancel := context.WithTimeout(ctx, time.Minute)
		defer rcancel()
		_, _, err := cl.Do(rctx, &client.Request{Kind: messages.KindChat, Group: "shared", Priority: 3, Tenant: tenant,
			Body: []byte(chatBody("shared", content))})
		return err
	}
	if !relPoll(30*time.Second, func() bool { return do("", "warm") == nil }) {
		b.Fatal("the worker does not serve")
	}
	idleNATS, idleWorker := readProcMem(b, natsProc), readProcMem(b, workerProc)

	start := time.Now()
	sem := make(chan struct{}, tenantsMemOutstanding)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs <- do(tenant(i), "request "+strconv.Itoa(i))
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatalf("a request failed: %v", err)
		}
	}
	peakNATS, peakWorker := readProcMem(b, natsProc), readProcMem(b, workerProc)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	stream, err := js.Stream(ctx, requestStream)
	if err != nil {
		b.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	select {
	case <-time.After(tenantsMemSettle):
	case <-ctx.Done():
		b.Fatal(ctx.Err())
	}
	settledNATS, settledWorker := readProcMem(b, natsProc), readProcMem(b, workerProc)

	b.ReportMetric(float64(info.State.Consumers), "consumers")
	b.ReportMetric(float64(n)/elapsed.Seconds(), "requests/s")
	for _, m := range []struct {
		name              string
		idle, peak, after procMem
	}{{"nats", idleNATS, peakNATS, settledNATS}, {"worker", idleWorker, peakWorker, settledWorker}} {
		b.ReportMetric(mb(m.idle.rss), m.name+"-idle-MB")
		b.ReportMetric(mb(m.peak.hwm), m.name+"-peak-MB")
		b.ReportMetric(mb(m.after.rss), m.name+"-settled-MB")
	}
}
