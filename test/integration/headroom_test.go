package integration

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmq/llmq/internal/fakeupstream"
)

// headroomConfig is the config shape of the headroom tests.
type headroomConfig struct {
	ModelList []deployment `yaml:"model_list"`
	LLMQ      struct {
		Headroom struct {
			Share    float64 `yaml:"share"`
			FromBand int     `yaml:"from_band"`
		} `yaml:"headroom"`
	} `yaml:"llmq_settings"`
}

// headroomCalls sends n chat completions at priority through openai-go, each
// with the content "<tag> <i>", and returns a wait for their errors.
func headroomCalls(t *testing.T, url, tag string, priority, n int) (wait func() []error) {
	t.Helper()
	oc := openai.NewClient(option.WithBaseURL(url+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := oc.Chat.Completions.New(waitCtx(t), openai.ChatCompletionNewParams{
				Model:    "hr",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(fmt.Sprintf("%s %d", tag, i))},
			}, option.WithJSONSet("priority", priority))
			if err == nil && (len(c.Choices) == 0 || c.Choices[0].Message.Content != fakeReply) {
				err = fmt.Errorf("%s %d: unexpected answer %+v", tag, i, c)
			}
			errs[i] = err
		})
	}
	return func() []error { wg.Wait(); return errs }
}

// running counts the calls the fake holds now, by the tag their content starts with.
func running(fake *fakeupstream.Server, tag string) int {
	n := 0
	for _, r := range fake.Requests() {
		if r.Finished.IsZero() && strings.HasPrefix(r.Content, tag+" ") {
			n++
		}
	}
	return n
}

// TestHeadroom: a backlog of the last band takes the worker slots, or a
// deployment's max_parallel_requests, only up to what leaves the headroom
// share free; requests of band 0 that arrive while every one of its calls
// still runs start at once, in that free share.
func TestHeadroom(t *testing.T) {
	tests := []struct {
		name        string
		slots       int
		maxParallel int
		low         int // last-band calls running beside band 0
	}{
		{name: "worker slots", slots: 8, low: 6},
		{name: "max_parallel_requests", slots: 16, maxParallel: 8, low: 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFake(t)
			fake.Hold() // every call runs until the end of the test
			var cfg headroomConfig
			cfg.ModelList = []deployment{fakeDeployment("hr", "hr-0", fake, tt.maxParallel)}
			cfg.LLMQ.Headroom.Share, cfg.LLMQ.Headroom.FromBand = 0.25, 9
			g := startEmbeddedGateway(t, writeYAMLConfig(t, cfg), tt.slots)

			lowDone := headroomCalls(t, g.URL, "batch", 9, 10)
			limPoll(t, func() bool { return running(fake, "batch") == tt.low })
			highDone := headroomCalls(t, g.URL, "band0", 0, 2)
			// Both band-0 calls start while every last-band call still runs:
			// the last band left them room, and did not take it itself.
			limPoll(t, func() bool { return running(fake, "band0") == 2 })
			if n := running(fake, "batch"); n != tt.low {
				t.Errorf("%d last-band calls run beside band 0, want %d", n, tt.low)
			}
			fake.Release()
			for _, err := range append(highDone(), lowDone()...) {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// TestHeadroomReload: a reload puts a new headroom in force: with it off
// the last band takes every slot; after a reload that turns it on, the
// new configuration's slots leave room for band 0.
func TestHeadroomReload(t *testing.T) {
	fake := newFake(t)
	fake.Hold()
	var cfg headroomConfig
	cfg.ModelList = []deployment{fakeDeployment("hr", "hr-0", fake, 0)}
	cfg.LLMQ.Headroom.FromBand = 9 // share 0: off
	path := writeYAMLConfig(t, cfg)
	g := startEmbeddedGateway(t, path, 4)

	lowDone := headroomCalls(t, g.URL, "batch", 9, 8)
	limPoll(t, func() bool { return running(fake, "batch") == 4 })

	cfg.LLMQ.Headroom.Share = 0.5
	rewrite(t, path, cfg)
	mustCtl(t, ctlEnv(path, g.NATSURL()), "reload", "--wait", "2s")
	// The old slots run their calls to the end; the new ones (4, half
	// kept free) take two more of the last band, and leave two for band 0.
	limPoll(t, func() bool { return running(fake, "batch") == 6 })
	highDone := headroomCalls(t, g.URL, "band0", 0, 2)
	limPoll(t, func() bool { return running(fake, "band0") == 2 })
	if n := running(fake, "batch"); n != 6 {
		t.Errorf("%d last-band calls run beside band 0, want 6", n)
	}
	fake.Release()
	for _, err := range append(highDone(), lowDone()...) {
		if err != nil {
			t.Error(err)
		}
	}
}
