// Command batchbench measures llmq's Batch API (issue 15) on 127.0.0.1, with
// the gateway and a worker as separate processes (cmd/gateway and cmd/worker,
// built into a temporary directory) on a NATS server in this process, and a
// fake OpenAI upstream (internal/fakeupstream) in this process:
//
//   - priority: the worker's -slots, with the upstream answering after
//     -latency, are the deployments' capacity. Three runs on one system:
//     band-0 traffic alone, open loop at -share of the nominal capacity
//     (slots ÷ latency) for -duration; a -lines batch alone (its rate is the
//     capacity as llmq achieves it, C); then the batch again with the same
//     band-0 traffic started once the batch runs. It reports band 0's queue
//     wait (x-llmq-queue-ms) p50 and p99 with and without the batch, and the
//     batch's rate during the band-0 traffic ÷ (C − band 0's served rate).
//   - memory: a -mb MB input file (50,000 lines of equal size) is uploaded,
//     run as a batch against an upstream without latency, and its output
//     written; the gateway process's resident memory (VmRSS, sampled every
//     20 ms) is reported before, at its peak during upload, run and
//     finalization, and after.
//
// Usage:
//
//	go run ./bench/cmd/batchbench            # full run, about 4 minutes
//	go run ./bench/cmd/batchbench -short     # about 1 minute: checks it works
//	go run ./bench/cmd/batchbench -headroom 0   # without llmq_settings.headroom
//
// Progress goes to stderr, the markdown summary to stdout.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/llmq/llmq/bench/internal/load"
	"github.com/llmq/llmq/bench/internal/stats"
	"github.com/llmq/llmq/bench/internal/system"
	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/internal/natsembed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "batchbench:", err)
		os.Exit(1)
	}
}

type options struct {
	phases   []string
	lines    int
	slots    int
	latency  time.Duration
	share    float64
	duration time.Duration
	mb       int
	headroom float64 // llmq_settings.headroom.share; negative: the default
	verbose  bool
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("batchbench", flag.ContinueOnError)
	var o options
	short := fs.Bool("short", false, "small counts and durations: checks the harness works")
	phases := fs.String("phases", "priority,memory", "phases to run")
	fs.IntVar(&o.lines, "lines", 10_000, "lines of the priority phase's batch")
	fs.IntVar(&o.slots, "slots", 40, "worker slots: with -latency, the capacity")
	fs.DurationVar(&o.latency, "latency", 50*time.Millisecond, "fake upstream latency of the priority phase")
	fs.Float64Var(&o.share, "share", 0.6, "band-0 load as a share of the nominal capacity")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "band-0 load duration")
	fs.IntVar(&o.mb, "mb", 100, "size of the memory phase's input file, MB")
	fs.Float64Var(&o.headroom, "headroom", -1, "llmq_settings.headroom.share (0: off); negative: llmq's default")
	fs.BoolVar(&o.verbose, "v", false, "llmq's log on stderr")
	timeout := fs.Duration("timeout", 15*time.Minute, "bound on the whole run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *short {
		o.lines, o.duration, o.mb = 600, 3*time.Second, 5
	}
	o.phases = strings.Split(*phases, ",")
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	binDir, err := os.MkdirTemp("", "batchbench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	logf("building cmd/gateway and cmd/worker")
	if err := system.Build(ctx, binDir); err != nil {
		return err
	}
	fmt.Printf("# Batch API benchmark (issue 15)\n\n")
	if slices.Contains(o.phases, "priority") {
		if err := priorityPhase(ctx, binDir, o); err != nil {
			return fmt.Errorf("priority: %w", err)
		}
	}
	if slices.Contains(o.phases, "memory") {
		if err := memoryPhase(ctx, binDir, o); err != nil {
			return fmt.Errorf("memory: %w", err)
		}
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05")+" "+format+"\n", args...)
}

// bench is a started system: NATS in this process, gateway and worker
// processes, the fake upstream in this process.
type bench struct {
	fake *fakeupstream.Server
	nats *natsembed.Server
	ext  *system.External
	dir  string
	url  string // gateway base URL, ending in /v1
}

func start(ctx context.Context, binDir string, o options, latency time.Duration, slots int) (*bench, error) {
	b := &bench{fake: fakeupstream.New(fakeupstream.Options{Latency: latency})}
	var err error
	if b.dir, err = os.MkdirTemp("", "batchbench-"); err != nil {
		return nil, err
	}
	if b.nats, err = natsembed.Start(natsembed.Options{Listen: "127.0.0.1:-1", StoreDir: filepath.Join(b.dir, "nats"), Name: "batchbench"}); err != nil {
		return nil, errors.Join(err, b.close())
	}
	cfg, err := writeConfig(b.dir, b.fake.URL, o.headroom)
	if err != nil {
		return nil, errors.Join(err, b.close())
	}
	var logOut io.Writer = io.Discard
	if o.verbose {
		logOut = os.Stderr
	}
	b.ext, err = system.StartExternal(ctx, binDir, system.ProcessOptions{Config: cfg, NATSURL: b.nats.ClientURL(), DataDir: filepath.Join(b.dir, "data"), LogOut: logOut, ParkAfter: time.Second}, slots)
	if err != nil {
		return nil, errors.Join(err, b.close())
	}
	b.url = b.ext.URL
	return b, nil
}

func (b *bench) close() error {
	var errs []error
	if b.ext != nil {
		errs = append(errs, b.ext.Close())
	}
	if b.nats != nil {
		b.nats.Shutdown()
	}
	b.fake.Close()
	errs = append(errs, os.RemoveAll(b.dir))
	return errors.Join(errs...)
}

// writeConfig writes one model group, system.Group, on the fake without
// limits (the worker slots are the capacity), with files up to 200 MB, and
// headroom's share unless it is negative.
func writeConfig(dir, upstream string, headroom float64) (string, error) {
	doc := map[string]any{
		"model_list": []map[string]any{{
			"model_name":     system.Group,
			"litellm_params": map[string]any{"model": "openai/" + system.Group + "-upstream", "api_base": upstream, "api_key": "bench", "timeout": 120},
			"model_info":     map[string]any{"id": "fake-upstream"},
		}},
		"router_settings": map[string]any{"timeout": 600, "num_retries": 0},
	}
	if headroom >= 0 {
		doc["llmq_settings"] = map[string]any{"headroom": map[string]any{"share": headroom}}
	}
	data, err := yaml.Marshal(doc)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "config.yaml")
	return path, os.WriteFile(path, data, 0o600)
}

// inputFile writes lines batch lines to w, each padded to lineBytes.
func inputFile(w io.Writer, lines, lineBytes int) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	for i := range lines {
		head := fmt.Sprintf(`{"custom_id":"l-%d","method":"POST","url":"/v1/chat/completions","body":{"model":%q,"max_tokens":16,"messages":[{"role":"user","content":"`, i, system.Group)
		tail := `"}]}}` + "\n"
		pad := max(lineBytes-len(head)-len(tail), 1)
		if _, err := bw.WriteString(head + strings.Repeat("x", pad) + tail); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// upload streams an input file of lines lines to the gateway.
func (b *bench) upload(ctx context.Context, lines, lineBytes int) (string, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := mw.WriteField("purpose", "batch")
		if err == nil {
			var part io.Writer
			if part, err = mw.CreateFormFile("file", "bench.jsonl"); err == nil {
				err = inputFile(part, lines, lineBytes)
			}
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.url+"/files", pr)
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	var f struct {
		ID string `json:"id"`
	}
	return f.ID, call(req, &f)
}

func call(req *http.Request, out any) error {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, body)
	}
	return json.Unmarshal(body, out)
}

type batch struct {
	ID            string `json:"id"`
	Status        string `json:"status"`
	OutputFileID  string `json:"output_file_id"`
	ErrorFileID   string `json:"error_file_id"`
	RequestCounts struct {
		Total, Completed, Failed int
	} `json:"request_counts"`
}

func (b *bench) create(ctx context.Context, fileID string) (*batch, error) {
	body := fmt.Sprintf(`{"input_file_id":%q,"endpoint":"/v1/chat/completions","completion_window":"24h"}`, fileID)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.url+"/batches", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	var bt batch
	return &bt, call(req, &bt)
}

func (b *bench) get(ctx context.Context, id string) (*batch, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url+"/batches/"+id, nil)
	if err != nil {
		return nil, err
	}
	var bt batch
	return &bt, call(req, &bt)
}

// sample is a batch's lines done at a time.
type sample struct {
	at   time.Time
	done int
}

// follow polls the batch every 100 ms until it is over and returns the
// samples of its lines done.
func (b *bench) follow(ctx context.Context, id string, samples chan<- sample) (*batch, error) {
	defer close(samples)
	for {
		bt, err := b.get(ctx, id)
		if err != nil {
			return nil, err
		}
		samples <- sample{at: time.Now(), done: bt.RequestCounts.Completed + bt.RequestCounts.Failed}
		switch bt.Status {
		case "completed", "failed", "expired", "cancelled":
			return bt, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// rate is lines per second between the last sample at or before from and
// the first at or after to.
func rate(s []sample, from, to time.Time) float64 {
	var a, z *sample
	for i := range s {
		if !s[i].at.After(from) {
			a = &s[i]
		}
		if z == nil && !s[i].at.Before(to) {
			z = &s[i]
		}
	}
	if a == nil || z == nil || !z.at.After(a.at) {
		return 0
	}
	return float64(z.done-a.done) / z.at.Sub(a.at).Seconds()
}

// band0 sends band-0 traffic at r req/s for d and returns its queue waits
// (ms) and how many were served.
func (b *bench) band0(ctx context.Context, r int, d time.Duration) ([]int, int, error) {
	client := load.NewClient(1024, 60*time.Second)
	samples, err := load.Attack(ctx, client, []load.Target{{Tag: "band0", URL: system.ChatURL(b.url), Body: system.ChatBody(0)}}, load.Shape{Rate: r, Duration: d})
	if err != nil {
		return nil, 0, err
	}
	var waits []int
	for _, s := range samples {
		if s.OK() && s.QueueMs >= 0 {
			waits = append(waits, s.QueueMs)
		}
	}
	slices.Sort(waits)
	return waits, len(waits), nil
}

func priorityPhase(ctx context.Context, binDir string, o options) error {
	b, err := start(ctx, binDir, o, o.latency, o.slots)
	if err != nil {
		return err
	}
	defer func() { _ = b.close() }()
	nominal := float64(o.slots) / o.latency.Seconds()
	r := int(nominal * o.share)

	logf("priority: band 0 alone, %d req/s for %s", r, o.duration)
	alone, servedAlone, err := b.band0(ctx, r, o.duration)
	if err != nil {
		return err
	}

	runBatch := func(during func(started time.Time) error) ([]sample, *batch, error) {
		fileID, err := b.upload(ctx, o.lines, 300)
		if err != nil {
			return nil, nil, err
		}
		bt, err := b.create(ctx, fileID)
		if err != nil {
			return nil, nil, err
		}
		ch := make(chan sample, 1024)
		var samples []sample
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range ch {
				samples = append(samples, s)
			}
		}()
		var final *batch
		var ferr error
		done := make(chan struct{})
		go func() { final, ferr = b.follow(ctx, bt.ID, ch); close(done) }()
		var derr error
		if during != nil {
			// Start once the batch's lines flow.
			for ctx.Err() == nil {
				cur, err := b.get(ctx, bt.ID)
				if err == nil && cur.RequestCounts.Completed > 0 {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			derr = during(time.Now())
		}
		<-done
		wg.Wait()
		return samples, final, errors.Join(ferr, derr)
	}

	logf("priority: a %d-line batch alone", o.lines)
	soloSamples, solo, err := runBatch(nil)
	if err != nil {
		return err
	}
	first, last := soloSamples[0], soloSamples[len(soloSamples)-1]
	for _, s := range soloSamples {
		if s.done > 0 {
			first = s
			break
		}
	}
	capacity := float64(last.done-first.done) / last.at.Sub(first.at).Seconds()

	logf("priority: the batch with band 0 at %d req/s", r)
	var with []int
	var servedWith int
	var window [2]time.Time
	mixSamples, mixed, err := runBatch(func(started time.Time) error {
		var err error
		window[0] = started.Add(2 * time.Second)
		with, servedWith, err = b.band0(ctx, r, o.duration)
		window[1] = time.Now()
		return err
	})
	if err != nil {
		return err
	}
	batchRate := rate(mixSamples, window[0], window[1])
	band0Rate := float64(servedWith) / o.duration.Seconds()
	left := capacity - band0Rate

	fmt.Printf("## Priority: a %d-line batch in the last band beside band-0 traffic\n\n", o.lines)
	fmt.Printf("%d worker slots, upstream latency %s: nominal capacity %.0f req/s; band 0 open loop at %d req/s (%.0f %%) for %s.\n\n",
		o.slots, o.latency, nominal, r, o.share*100, o.duration)
	if o.headroom >= 0 {
		fmt.Printf("llmq_settings.headroom.share: %g.\n\n", o.headroom)
	} else {
		fmt.Printf("llmq_settings.headroom: the default.\n\n")
	}
	fmt.Printf("| band-0 queue wait | without the batch | with the batch | change |\n|---|---|---|---|\n")
	for _, p := range []float64{50, 99} {
		a, w := stats.Percentile(alone, p), stats.Percentile(with, p)
		fmt.Printf("| p%.0f | %d ms | %d ms | %+d ms |\n", p, a, w, w-a)
	}
	fmt.Printf("| served | %d | %d | |\n\n", servedAlone, servedWith)
	fmt.Printf("| batch | value |\n|---|---|\n")
	fmt.Printf("| alone: lines/s (capacity C as llmq achieves it) | %.0f |\n", capacity)
	fmt.Printf("| beside band 0: lines/s (from 2 s after band 0 started) | %.0f |\n", batchRate)
	fmt.Printf("| band 0 served, req/s | %.0f |\n", band0Rate)
	fmt.Printf("| share of what band 0 leaves, rate ÷ (C − band 0) | %.1f %% |\n", 100*batchRate/left)
	fmt.Printf("| statuses (alone, beside) | %s %+v, %s %+v |\n\n", solo.Status, solo.RequestCounts, mixed.Status, mixed.RequestCounts)
	return nil
}

// rss is a process's resident memory in bytes (VmRSS), or 0.
func rss(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func memoryPhase(ctx context.Context, binDir string, o options) error {
	b, err := start(ctx, binDir, o, 0, 64)
	if err != nil {
		return err
	}
	defer func() { _ = b.close() }()
	pid := b.ext.Procs()[0].PID
	const lines = 50_000
	lineBytes := o.mb << 20 / lines

	var mu sync.Mutex
	peak := map[string]int64{}
	stage := "idle"
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			v := rss(pid)
			mu.Lock()
			peak[stage] = max(peak[stage], v)
			mu.Unlock()
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	setStage := func(s string) {
		mu.Lock()
		stage = s
		mu.Unlock()
	}
	time.Sleep(time.Second)
	before := rss(pid)
	logf("memory: uploading %d lines of %d bytes (%d MB)", lines, lineBytes, o.mb)
	setStage("upload")
	started := time.Now()
	fileID, err := b.upload(ctx, lines, lineBytes)
	if err != nil {
		stop()
		return err
	}
	uploadTime := time.Since(started)
	setStage("run")
	bt, err := b.create(ctx, fileID)
	if err != nil {
		stop()
		return err
	}
	ch := make(chan sample, 16)
	go func() {
		for range ch {
		}
	}()
	runStart := time.Now()
	final, err := b.follow(ctx, bt.ID, ch)
	runTime := time.Since(runStart)
	setStage("after")
	time.Sleep(time.Second)
	stop()
	wg.Wait()
	if err != nil {
		return err
	}
	after := rss(pid)
	mb := func(v int64) string { return fmt.Sprintf("%.1f MB", float64(v)/(1<<20)) }
	fmt.Printf("## Memory: a %d MB input file (%d lines)\n\n", o.mb, lines)
	fmt.Printf("Gateway process resident memory (VmRSS, sampled every 20 ms); NATS and the worker are other processes.\n\n")
	fmt.Printf("| | gateway RSS | growth over idle |\n|---|---|---|\n")
	fmt.Printf("| idle, before the upload | %s | |\n", mb(before))
	fmt.Printf("| peak during the upload (%s) | %s | %s |\n", uploadTime.Round(100*time.Millisecond), mb(peak["upload"]), mb(peak["upload"]-before))
	fmt.Printf("| peak while the batch ran and was finalized (%s) | %s | %s |\n", runTime.Round(100*time.Millisecond), mb(peak["run"]), mb(peak["run"]-before))
	fmt.Printf("| after | %s | %s |\n\n", mb(after), mb(after-before))
	fmt.Printf("Batch %s: %+v.\n\n", final.Status, final.RequestCounts)
	return nil
}
