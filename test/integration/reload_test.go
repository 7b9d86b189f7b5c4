package integration

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/ctl"
)

// reloadConfig is the config shape the reload tests rewrite in place.
type reloadConfig struct {
	ModelList       []deployment     `yaml:"model_list"`
	GeneralSettings *generalSettings `yaml:"general_settings,omitempty"`
	LLMQ            struct {
		SubjectPrefix string `yaml:"subject_prefix,omitempty"`
		Keys          []struct {
			Name string `yaml:"name"`
			Key  string `yaml:"key"`
		} `yaml:"keys,omitempty"`
	} `yaml:"llmq_settings"`
}

// rewrite replaces the file at path with cfg (or with raw YAML).
func rewrite(t *testing.T, path string, cfg any) {
	t.Helper()
	data, ok := cfg.([]byte)
	if !ok {
		var err error
		if data, err = yaml.Marshal(cfg); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReload: llmqctl reload makes the gateway and every worker take the
// config file again: a new model group and its deployment take traffic and
// a new key is accepted, without a restart, while a call in flight goes
// on undisturbed; a config with errors, or one that changes what needs a
// restart, is refused by every process, which keeps serving as before.
func TestReload(t *testing.T) {
	const master = "sk-master-reload"
	natsURL := startNATS(t)
	fAlpha, fBeta := newFake(t), newFake(t)
	var cfg reloadConfig
	cfg.ModelList = []deployment{fakeDeployment("alpha", "alpha-0", fAlpha, 0)}
	cfg.GeneralSettings = &generalSettings{MasterKey: master}
	path := writeYAMLConfig(t, cfg)
	env := baseEnv(path)
	env.NATSURL = natsURL
	g := startGateway(t, env)
	startWorker(t, path, natsURL, 2)
	ctlEnv := ctlEnv(path, natsURL)
	chatURL := g.URL + "/v1/chat/completions"

	checkServed(t, mustPost(t, chatURL, master, chatBody("alpha", "before")))
	if r := mustPost(t, chatURL, master, chatBody("beta", "before")); r.Status != http.StatusNotFound {
		t.Fatalf("beta before the reload: %s, want 404 (no such group yet)", r)
	}

	// A call in flight across the reload.
	fAlpha.Hold()
	inflight := make(chan *result, 1)
	go func() {
		r, err := post(waitCtx(t), chatURL, master, chatBody("alpha", "in flight"))
		if err != nil {
			t.Error(err)
		}
		inflight <- r
	}()
	limPoll(t, func() bool { return fAlpha.InFlight() == 1 })

	cfg.ModelList = append(cfg.ModelList, fakeDeployment("beta", "beta-0", fBeta, 0))
	cfg.LLMQ.Keys = append(cfg.LLMQ.Keys, struct {
		Name string `yaml:"name"`
		Key  string `yaml:"key"`
	}{"team", "sk-team-reload"})
	rewrite(t, path, cfg)
	out := mustCtl(t, ctlEnv, "reload", "--wait", "2s")
	if !strings.Contains(out, "2 processes answered") || strings.Count(out, "reloaded: 2 deployments in model groups alpha, beta") != 2 ||
		!strings.Contains(out, "gateway ") || !strings.Contains(out, "worker ") {
		t.Errorf("llmqctl reload printed:\n%s\nwant the gateway and the worker reloaded with alpha and beta", out)
	}

	r := mustPost(t, chatURL, "sk-team-reload", chatBody("beta", "after"))
	checkServed(t, r)
	if d := r.Header.Get("x-llmq-deployment"); d != "beta-0" || fBeta.Count() != 1 {
		t.Errorf("beta after the reload: served by %q, its upstream saw %d calls; want beta-0 and 1", d, fBeta.Count())
	}
	fAlpha.Release()
	select {
	case r := <-inflight:
		if r != nil {
			checkServed(t, r)
		}
	case <-waitCtx(t).Done():
		t.Fatal("the call in flight during the reload got no answer")
	}
	if n := fAlpha.Count(); n != 2 {
		t.Errorf("alpha's upstream saw %d calls, want 2 (the one in flight was not repeated)", n)
	}

	// Refused: errors in the file, and a change that needs a restart. The
	// running configuration stays in force everywhere.
	for _, c := range []struct {
		name string
		cfg  any
		want string
	}{
		{"errors", []byte("model_list:\n  - model_name: beta\n    litellm_params: {model: openai/x, api_base: " + fBeta.URL + ", rpm: -5}\n"),
			"model_list[0].litellm_params.rpm"},
		{"restart only", func() reloadConfig { c := cfg; c.LLMQ.SubjectPrefix = "other"; return c }(),
			"llmq_settings.subject_prefix: cannot change without a restart"},
	} {
		rewrite(t, path, c.cfg)
		// --prefix: this llmqctl reads the same file, which names
		// another prefix in the second case.
		out, err := llmqctl(t, ctlEnv, "reload", "--wait", "2s", "--prefix", "llmq")
		if !errors.Is(err, ctl.ErrReloadRefused) || strings.Count(out, "REFUSED") != 2 || strings.Count(out, c.want) != 2 {
			t.Errorf("%s: llmqctl reload: %v, printed:\n%s\nwant both processes to refuse, naming %q", c.name, err, out, c.want)
		}
		checkServed(t, mustPost(t, chatURL, "sk-team-reload", chatBody("beta", "still "+c.name)))
		checkServed(t, mustPost(t, chatURL, master, chatBody("alpha", "still "+c.name)))
	}
}

// TestReloadOnSignal: the embedded default (gateway, NATS and workers in one
// process) reloads on the signal ReloadOn passes (SIGHUP in cmd/gateway).
func TestReloadOnSignal(t *testing.T) {
	fAlpha, fBeta := newFake(t), newFake(t)
	var cfg reloadConfig
	cfg.ModelList = []deployment{fakeDeployment("alpha", "alpha-0", fAlpha, 0)}
	path := writeYAMLConfig(t, cfg)
	env := baseEnv(path)
	env.DataDir, env.EmbeddedWorkers = t.TempDir(), 2
	hup := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(t.Context())
	gw, err := app.StartGateway(ctx, env, noEnv, newTestLog(t), app.ReloadOn(hup))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := gw.Wait(); err != nil {
			t.Errorf("gateway stopped with: %v", err)
		}
	})
	url := "http://" + gw.Addr().String()
	checkServed(t, mustPost(t, url+"/v1/chat/completions", "", chatBody("alpha", "before the signal")))

	cfg.ModelList = append(cfg.ModelList, fakeDeployment("beta", "beta-0", fBeta, 0))
	rewrite(t, path, cfg)
	hup <- os.Interrupt // any value: the channel is the signal
	limPoll(t, func() bool {
		return strings.Contains(string(mustGet(t, url+"/v1/models", "").Body), `"beta"`)
	})
	r := mustPost(t, url+"/v1/chat/completions", "", chatBody("beta", "after the signal"))
	checkServed(t, r)
	if d := r.Header.Get("x-llmq-deployment"); d != "beta-0" {
		t.Errorf("beta after the signal: served by %q, want beta-0", d)
	}
}
