package deploycheck

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"gopkg.in/yaml.v3"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/ctl"
	"github.com/llmq/llmq/internal/deadletter"
	"github.com/llmq/llmq/internal/gateway"
	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/queuepage"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/limiter"
	"github.com/llmq/llmq/pkg/messages"
)

// workerMetricsPath is the path of the worker's metrics listener
// (LLMQ_METRICS_LISTEN), registered in internal/app/worker.go, which exports
// no name for it. TestLive fetches it from a running worker.
const workerMetricsPath = "/metrics"

// The roles that connect to NATS, each with the permissions its code needs.
const (
	roleGateway = "gateway"
	roleWorker  = "worker"
	roleService = "service" // an internal service using pkg/client
	roleAdmin   = "admin"   // llmqctl, the operator's command
)

// roleOf maps the image's commands (cmd/<name>) to the role that runs them.
var roleOf = map[string]string{"gateway": roleGateway, "worker": roleWorker, "llmqctl": roleAdmin}

// ---------------------------------------------------------------------------
// Loading everything under deploy/

type deploy struct {
	root  string            // repository root
	goMod string            // go.mod
	files []string          // every file under deploy/, slash-separated, relative to deploy/
	text  map[string]string // file contents by relative path

	env map[string]envVar // LLMQ_* variables of config.Env

	example *config.Config // deploy/config.example.yaml
	subj    messages.Subjects
	bands   int
	groups  []string

	natsServers  map[string]*natsConf // server configs (nats-server -c) by relative path
	natsIncludes map[string]bool      // config files only included by others
	pwVar        map[string]string    // test password value -> its environment variable
	pwValue      map[string]string    // environment variable -> test password value

	docker  *dockerfile
	ignore  []string // Dockerfile.dockerignore patterns
	compose map[string]any

	k8s       []k8sObj
	values    map[string]any // k8s/nats-values.yaml
	kustomize map[string]any // k8s/kustomization.yaml
	dashboard map[string]any
}

// kind tells which check owns a file under deploy/; "" means none.
func kind(rel string) string {
	switch {
	case rel == "README.md":
		return "readme"
	case rel == "config.example.yaml":
		return "llmq-config"
	case rel == "Dockerfile":
		return "dockerfile"
	case rel == "Dockerfile.dockerignore":
		return "dockerignore"
	case rel == "compose.yaml":
		return "compose"
	case strings.HasPrefix(rel, "nats/") && strings.HasSuffix(rel, ".conf") && !strings.Contains(rel[5:], "/"):
		return "nats"
	case rel == "k8s/nats-values.yaml":
		return "helm-values"
	case rel == "k8s/kustomization.yaml":
		return "kustomization"
	case strings.HasPrefix(rel, "k8s/") && strings.HasSuffix(rel, ".yaml") && !strings.Contains(rel[4:], "/"):
		return "k8s"
	case strings.HasPrefix(rel, "grafana/") && strings.HasSuffix(rel, ".json") && !strings.Contains(rel[8:], "/"):
		return "grafana"
	}
	return ""
}

func load(t *testing.T) *deploy {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found from the package directory: %v", err)
	}
	d := &deploy{root: root, text: map[string]string{}, env: envVars(t)}
	goMod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	d.goMod = string(goMod)
	dir := filepath.Join(root, "deploy")
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		d.files = append(d.files, rel)
		d.text[rel] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The example config: bands, groups and the subject prefix.
	d.example, err = config.Load(d.path("config.example.yaml"), anyEnv)
	if err != nil {
		t.Fatalf("deploy/config.example.yaml: %v", err)
	}
	d.subj, err = messages.NewSubjects(d.example.LLMQ.SubjectPrefix)
	if err != nil {
		t.Fatal(err)
	}
	bands, err := messages.NewBands(d.example.LLMQ.PriorityBands)
	if err != nil {
		t.Fatal(err)
	}
	d.bands, d.groups = bands.Count(), d.example.Groups()

	d.loadNATS(t)
	for _, rel := range d.files {
		var err error
		switch kind(rel) {
		case "dockerfile":
			d.docker, err = parseDockerfile(d.text[rel])
		case "dockerignore":
			d.ignore = parseIgnore(d.text[rel])
		case "compose":
			err = yaml.Unmarshal([]byte(d.text[rel]), &d.compose)
		case "helm-values":
			err = yaml.Unmarshal([]byte(d.text[rel]), &d.values)
		case "kustomization":
			err = yaml.Unmarshal([]byte(d.text[rel]), &d.kustomize)
		case "k8s":
			var objs []k8sObj
			objs, err = parseManifests(rel, d.text[rel])
			d.k8s = append(d.k8s, objs...)
		case "grafana":
			err = json.Unmarshal([]byte(d.text[rel]), &d.dashboard)
		}
		if err != nil {
			t.Fatalf("deploy/%s: %v", rel, err)
		}
	}
	for name, v := range map[string]any{"Dockerfile": d.docker, "compose.yaml": d.compose, "k8s/nats-values.yaml": d.values,
		"k8s/kustomization.yaml": d.kustomize, "a Grafana dashboard": d.dashboard} {
		if reflect.ValueOf(v).IsNil() {
			t.Fatalf("deploy/ has no %s", name)
		}
	}
	return d
}

func (d *deploy) path(rel string) string {
	return filepath.Join(d.root, "deploy", filepath.FromSlash(rel))
}

// anyEnv resolves every os.environ/ reference of an llmq config.
func anyEnv(string) (string, bool) { return "x", true }

// ---------------------------------------------------------------------------
// config.Env

type envVar struct {
	field reflect.StructField
	def   string
}

// envVars returns config.Env's variables by name (LLMQ_<envconfig tag>).
func envVars(t *testing.T) map[string]envVar {
	t.Helper()
	out := map[string]envVar{}
	typ := reflect.TypeFor[config.Env]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("envconfig")
		if tag == "" {
			t.Fatalf("config.Env.%s has no envconfig tag", f.Name)
		}
		out["LLMQ_"+tag] = envVar{field: f, def: f.Tag.Get("default")}
	}
	return out
}

// envFrom builds a config.Env the way envconfig does: the value given in m,
// else the default tag.
func (d *deploy) envFrom(m map[string]string) (config.Env, error) {
	var e config.Env
	v := reflect.ValueOf(&e).Elem()
	for name, ev := range d.env {
		s, ok := m[name]
		if !ok {
			s = ev.def
		}
		if s == "" {
			continue
		}
		f := v.FieldByIndex(ev.field.Index)
		switch {
		case f.Type() == reflect.TypeFor[time.Duration]():
			dur, err := time.ParseDuration(s)
			if err != nil {
				return e, fmt.Errorf("%s: %w", name, err)
			}
			f.SetInt(int64(dur))
		case f.Kind() == reflect.String:
			f.SetString(s)
		case f.CanInt():
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return e, fmt.Errorf("%s: %w", name, err)
			}
			f.SetInt(n)
		case f.Kind() == reflect.Bool:
			b, err := strconv.ParseBool(s)
			if err != nil {
				return e, fmt.Errorf("%s: %w", name, err)
			}
			f.SetBool(b)
		default:
			return e, fmt.Errorf("%s: config.Env field of type %s: teach deploycheck's envFrom", name, f.Type())
		}
	}
	return e, nil
}

// portOf returns the port of a listen address such as ":4000".
func portOf(t *testing.T, where, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	n, perr := strconv.Atoi(p)
	if err != nil || perr != nil {
		t.Errorf("%s: %q is not host:port", where, addr)
	}
	return n
}

// ---------------------------------------------------------------------------
// Every file

func TestEveryFileIsChecked(t *testing.T) {
	d := load(t)
	home, _ := os.UserHomeDir()
	if home == "/root" {
		home = "" // also the home of root in containers, e.g. the Go build cache
	}
	llmqVar := regexp.MustCompile(`\bLLMQ_[A-Z0-9_]*[A-Z0-9]`)
	streams := map[string]bool{d.subj.RequestStream(): true, d.subj.DeadLetterStream(): true}
	for _, rel := range d.files {
		if kind(rel) == "" {
			t.Errorf("deploy/%s: no check in internal/deploycheck knows this file; add one (see kind())", rel)
		}
		text := d.text[rel]
		for _, p := range []string{d.root, home} {
			if p != "" && p != "/" && strings.Contains(text, p) {
				t.Errorf("deploy/%s mentions the absolute path %s of this machine", rel, p)
			}
		}
		for _, name := range llmqVar.FindAllString(text, -1) {
			if _, ok := d.env[name]; !ok && !streams[name] {
				t.Errorf("deploy/%s names %s, which is not a variable of config.Env", rel, name)
			}
		}
	}
	// The README says what each file is.
	for _, rel := range d.files {
		if rel != "README.md" && !strings.Contains(d.text["README.md"], rel) {
			t.Errorf("deploy/README.md does not mention %s", rel)
		}
	}
	if d.subj.Prefix() != messages.DefaultPrefix {
		t.Errorf("deploy/config.example.yaml: subject_prefix %q; the NATS permissions in deploy/ are written for %q", d.subj.Prefix(), messages.DefaultPrefix)
	}
}

// ---------------------------------------------------------------------------
// NATS server configs

type natsConf struct {
	rel      string
	opts     *server.Options
	includes []string // relative to deploy/
	users    map[string]natsUser
}

type natsUser struct {
	Name, PasswordVar, Account string
	PubAllow, PubDeny          []string
	SubAllow, SubDeny          []string
	Responses                  bool
}

var (
	includeRe = regexp.MustCompile(`(?m)^\s*include\s+["']?([^"'\s;]+)["']?`)
	varRefRe  = regexp.MustCompile(`\$([A-Za-z_][A-Za-z0-9_]*)`)
)

// unquotedVarRefs returns the $NAME references of a nats-server config,
// skipping comments and quoted strings (where "$JS..." is a literal).
func unquotedVarRefs(text string) []string {
	var out []string
	for line := range strings.Lines(text) {
		var b strings.Builder
		quote := byte(0)
		for i := 0; i < len(line); i++ {
			c := line[i]
			switch {
			case quote != 0:
				if c == quote {
					quote = 0
				}
			case c == '"' || c == '\'':
				quote = c
			case c == '#' || (c == '/' && i+1 < len(line) && line[i+1] == '/'):
				i = len(line)
			default:
				b.WriteByte(c)
			}
		}
		for _, m := range varRefRe.FindAllStringSubmatch(b.String(), -1) {
			out = append(out, m[1])
		}
	}
	return out
}

func (d *deploy) loadNATS(t *testing.T) {
	t.Helper()
	d.natsServers, d.natsIncludes = map[string]*natsConf{}, map[string]bool{}
	d.pwVar, d.pwValue = map[string]string{}, map[string]string{}
	included := map[string]bool{}
	var confs []string
	for _, rel := range d.files {
		if kind(rel) != "nats" {
			continue
		}
		confs = append(confs, rel)
		for _, name := range unquotedVarRefs(d.text[rel]) {
			if _, ok := d.pwValue[name]; !ok {
				v := "pw" + strings.ToLower(strings.ReplaceAll(name, "_", ""))
				d.pwValue[name], d.pwVar[v] = v, name
				t.Setenv(name, v)
			}
		}
		for _, m := range includeRe.FindAllStringSubmatch(d.text[rel], -1) {
			inc := path.Join(path.Dir(rel), m[1])
			if _, ok := d.text[inc]; !ok {
				t.Errorf("deploy/%s includes %s, which does not exist", rel, m[1])
			}
			included[inc] = true
		}
	}
	for _, rel := range confs {
		if included[rel] {
			d.natsIncludes[rel] = true
			continue
		}
		opts, err := server.ProcessConfigFile(d.path(rel))
		if err != nil {
			t.Fatalf("deploy/%s: %v", rel, err)
		}
		c := &natsConf{rel: rel, opts: opts, users: map[string]natsUser{}}
		c.includes = d.includesOf(rel)
		for _, u := range opts.Users {
			nu := natsUser{Name: u.Username, PasswordVar: d.pwVar[u.Password], Account: "$G"}
			if u.Account != nil {
				nu.Account = u.Account.GetName()
			}
			if p := u.Permissions; p != nil {
				if p.Publish != nil {
					nu.PubAllow, nu.PubDeny = sorted(p.Publish.Allow), sorted(p.Publish.Deny)
				}
				if p.Subscribe != nil {
					nu.SubAllow, nu.SubDeny = sorted(p.Subscribe.Allow), sorted(p.Subscribe.Deny)
				}
				nu.Responses = p.Response != nil
			}
			if nu.PasswordVar == "" {
				t.Errorf("deploy/%s: user %s: the password must be a $VARIABLE reference, not a literal", rel, u.Username)
			}
			c.users[u.Username] = nu
		}
		d.natsServers[rel] = c
	}
}

// includesOf returns every file rel includes, transitively.
func (d *deploy) includesOf(rel string) []string {
	var out []string
	for _, m := range includeRe.FindAllStringSubmatch(d.text[rel], -1) {
		inc := path.Join(path.Dir(rel), m[1])
		out = append(out, inc)
		out = append(out, d.includesOf(inc)...)
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// covers reports whether every subject matching sub (which may contain
// wildcards) also matches the permission pattern pat.
func covers(pat, sub string) bool {
	p, s := strings.Split(pat, "."), strings.Split(sub, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) {
			return false
		}
		switch {
		case tok == "*":
			if s[i] == ">" {
				return false
			}
		case tok != s[i]:
			return false
		}
	}
	return len(p) == len(s)
}

func allowed(allow, deny []string, sub string) bool {
	for _, d := range deny {
		if covers(d, sub) || covers(sub, d) {
			return false
		}
	}
	for _, a := range allow {
		if covers(a, sub) {
			return true
		}
	}
	return false
}

// roleNeeds is what one role's code publishes and subscribes to.
type roleNeeds struct {
	pub, sub []string // each must be allowed
	optPub   []string // may be allowed
}

// needs derives every subject each role uses from the code's names: the
// subjects of pkg/messages for every band and model group of the example
// config, the JetStream API calls of internal/topology (Ensure, Check),
// internal/worker (bind, poll, fetch, ack, dead letters), pkg/client and
// llmqctl (internal/ctl, internal/deadletter, internal/pauses,
// internal/reload), and nats.go's inbox prefix (pkg/client and the worker
// use nc.NewRespInbox).
func (d *deploy) needs() map[string]roleNeeds {
	s := d.subj
	api := jetstream.DefaultAPIPrefix
	inbox := nats.InboxPrefix + ">"
	req, dead := s.RequestStream(), s.DeadLetterStream()
	bucket := s.LimitsBucket()
	kvStream, kvPre := "KV_"+bucket, "$KV."+bucket+"."
	ensure := []string{
		api + "STREAM.INFO." + req,
		api + "STREAM.CREATE." + req, api + "STREAM.UPDATE." + req,
		api + "STREAM.CREATE." + dead, api + "STREAM.UPDATE." + dead,
	}
	var requests, wakes, deads, consumers, fetch, acks, infos, served []string
	for b := range d.bands {
		for _, g := range d.groups {
			// The group's own lane, and the first and last tenant lanes.
			for _, lane := range []int{messages.NoLane, 0, messages.TenantLanes - 1} {
				c := s.ConsumerLane(b, g, lane)
				requests = append(requests, s.RequestLane(b, g, lane))
				wakes = append(wakes, s.WakeLane(b, g, lane))
				deads = append(deads, s.DeadLetter(s.RequestLane(b, g, lane)))
				consumers = append(consumers, fmt.Sprintf("%sCONSUMER.CREATE.%s.%s.%s", api, req, c, s.RequestLane(b, g, lane)))
				fetch = append(fetch, fmt.Sprintf("%sCONSUMER.MSG.NEXT.%s.%s", api, req, c))
				acks = append(acks, fmt.Sprintf("$JS.ACK.%s.%s.1.1.1.1.1", req, c))
				infos = append(infos, fmt.Sprintf("%sCONSUMER.INFO.%s.%s", api, req, c))
				served = append(served, s.Served(b, g, lane))
			}
		}
	}
	// pkg/limiter.Open: create or update the bucket (nats.go asks for the
	// account info first), bind its stream, watch it (an ordered consumer
	// with flow control, deleted when the watch stops).
	kvOpen := []string{
		api + "INFO",
		api + "STREAM.INFO." + kvStream, api + "STREAM.CREATE." + kvStream, api + "STREAM.UPDATE." + kvStream,
		api + "CONSUMER.CREATE." + kvStream + ".w." + kvPre + ">",
		api + "CONSUMER.DELETE." + kvStream + ".w",
		"$JS.FC." + kvStream + ".w.1.1",
	}
	// internal/pauses.Open: the same for the pauses bucket (no account
	// info: the limiter asks for it first).
	pStream, pPre := "KV_"+s.PausesBucket(), "$KV."+s.PausesBucket()+"."
	pausesOpen := []string{
		api + "STREAM.INFO." + pStream, api + "STREAM.CREATE." + pStream, api + "STREAM.UPDATE." + pStream,
		api + "CONSUMER.CREATE." + pStream + ".w." + pPre + ">",
		api + "CONSUMER.DELETE." + pStream + ".w",
		"$JS.FC." + pStream + ".w.1.1",
	}
	// pkg/limiter's reservations: compare-and-set writes, and re-reads of one
	// key (direct get; KV buckets allow it).
	kvWrite := []string{kvPre + "k", api + "DIRECT.GET." + kvStream + "." + kvPre + "k"}
	// internal/queuestatus: the queue's state and the oldest request of
	// each band and group; internal/deadletter: reading dead letters.
	queueRead := []string{api + "STREAM.INFO." + req, api + "STREAM.MSG.GET." + req}
	deadRead := []string{api + "STREAM.INFO." + dead, api + "STREAM.MSG.GET." + dead}
	// internal/batch (gateway): the files bucket (an object store) and the
	// batches and batch lines buckets: create, write, read (direct gets),
	// purge, watch and list (ordered push consumers with flow control), and
	// read through ordered pull consumers; the batch lines' pickups and
	// answers, in a queue group.
	var batches []string
	for _, b := range []struct {
		stream, pre string
		purge, pull bool
	}{
		{"OBJ_" + s.FilesBucket(), "$O." + s.FilesBucket() + ".", true, true},
		{"KV_" + s.BatchesBucket(), "$KV." + s.BatchesBucket() + ".", false, false},
		{"KV_" + s.BatchLinesBucket(), "$KV." + s.BatchLinesBucket() + ".", true, true},
	} {
		batches = append(batches, b.pre+"k",
			api+"STREAM.INFO."+b.stream, api+"STREAM.CREATE."+b.stream, api+"STREAM.UPDATE."+b.stream,
			api+"DIRECT.GET."+b.stream+"."+b.pre+"k",
			api+"CONSUMER.CREATE."+b.stream+".c."+b.pre+">", api+"CONSUMER.DELETE."+b.stream+".c")
		if b.purge {
			batches = append(batches, api+"STREAM.PURGE."+b.stream)
		}
		if b.pull {
			batches = append(batches, api+"CONSUMER.MSG.NEXT."+b.stream+".c")
		}
		if b.stream != "KV_"+s.BatchLinesBucket() {
			batches = append(batches, "$JS.FC."+b.stream+".c.1.1")
		} else {
			batches = append(batches, api+"CONSUMER.INFO."+b.stream+".c")
		}
	}
	// llmqctl status: the batches not over, from one watch of the batches
	// bucket (internal/batch.ReadActive).
	bStream := "KV_" + s.BatchesBucket()
	batchesRead := []string{
		api + "STREAM.INFO." + bStream,
		api + "CONSUMER.CREATE." + bStream + ".w.$KV." + s.BatchesBucket() + ".>",
		api + "CONSUMER.DELETE." + bStream + ".w",
		"$JS.FC." + bStream + ".w.1.1",
	}
	cat := func(lists ...[]string) []string { return slices.Concat(lists...) }
	return map[string]roleNeeds{
		roleGateway: {
			// GET /v1/queue reads the oldest message of each subject and
			// the newest dead letters (internal/queuestatus), and mirrors
			// the limiter state and the pauses; pkg/client wakes workers
			// for a redelivery.
			// pkg/client announces requests it left (s.Left) and acks served
			// requests when their answers arrive.
			pub: cat(requests, wakes, []string{s.Gone(), s.Left(), inbox}, acks, ensure, consumers, queueRead, deadRead, kvOpen, pausesOpen, batches),
			// llmqctl reload asks on s.Reload (internal/reload); batch lines'
			// pickups and answers come on s.BatchReplyWildcard (internal/batch).
			sub:    []string{inbox, s.Reload(), s.BatchReplyWildcard()},
			optPub: []string{"$JS.ACK.*.*." + req + ".>"},
		},
		roleWorker: {
			pub: cat([]string{inbox, s.BatchReply("batch_x", 0)}, deads, served, fetch, acks, infos, ensure, consumers, kvOpen, kvWrite, pausesOpen),
			sub: cat(wakes, served, []string{s.Gone(), s.Left(), inbox, s.Reload()}),
			// The v2 ack subject ($JS.ACK.<domain>.<account hash>.<stream>...),
			// which nats-server 2.15 understands but does not send yet.
			optPub: []string{"$JS.ACK.*.*." + req + ".>"},
		},
		roleService: {
			pub:    cat(requests, wakes, []string{s.Gone(), s.Left(), inbox}, acks),
			sub:    []string{inbox},
			optPub: []string{api + "STREAM.INFO." + req, "$JS.ACK.*.*." + req + ".>"},
		},
		roleAdmin: {
			// internal/ctl through app.Admin, which creates no stream or
			// consumer: status reads the queue and the dead letters as GET
			// /v1/queue does, and opens the limiter's and the pauses'
			// mirrors as the gateway does; dead list and show read dead
			// letters, replay submits with pkg/client and then deletes the
			// letter, purge purges the stream (internal/deadletter); pause
			// and resume put and delete keys of the pauses bucket; reload
			// asks on s.Reload and collects the answers on its inbox
			// (internal/reload); status reads the batches too.
			pub: cat(requests, wakes, []string{s.Gone(), s.Left(), inbox, s.Reload()}, acks, queueRead, deadRead,
				[]string{api + "STREAM.MSG.DELETE." + dead, api + "STREAM.PURGE." + dead}, kvOpen, pausesOpen, []string{pPre + ">"}, batchesRead),
			sub:    []string{inbox},
			optPub: []string{"$JS.ACK.*.*." + req + ".>"},
		},
	}
}

// reporter is the part of *testing.T that checkUser uses.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// checkUser reports what user u may not do of n, and (when strict) the
// permissions it has beyond n.
func checkUser(t reporter, where string, u natsUser, n roleNeeds, strict bool) {
	t.Helper()
	for _, s := range n.pub {
		if !allowed(u.PubAllow, u.PubDeny, s) {
			t.Errorf("%s: user %s may not publish %s", where, u.Name, s)
		}
	}
	for _, s := range n.sub {
		if !allowed(u.SubAllow, u.SubDeny, s) {
			t.Errorf("%s: user %s may not subscribe %s", where, u.Name, s)
		}
	}
	if !strict {
		return
	}
	used := func(p string, subs ...[]string) bool {
		for _, list := range subs {
			for _, s := range list {
				if covers(p, s) {
					return true
				}
			}
		}
		return false
	}
	for _, p := range u.PubAllow {
		if !used(p, n.pub, n.optPub) {
			t.Errorf("%s: user %s may publish %s, which its code does not use", where, u.Name, p)
		}
	}
	for _, p := range u.SubAllow {
		if !used(p, n.sub) {
			t.Errorf("%s: user %s may subscribe %s, which its code does not use", where, u.Name, p)
		}
	}
}

// jsStream returns the stream a JetStream permission is about.
func jsStream(p string) (string, bool) {
	t := strings.Split(p, ".")
	at := func(i int) (string, bool) {
		if i < len(t) {
			return t[i], true
		}
		return "", false
	}
	switch {
	case p == jetstream.DefaultAPIPrefix+"INFO": // the account's JetStream info: no stream
		return "", true
	case t[0] == "$KV" && len(t) > 1:
		return "KV_" + t[1], true
	case t[0] == "$O" && len(t) > 1:
		return "OBJ_" + t[1], true
	case t[0] != "$JS" || len(t) < 3:
		return "", false
	case t[1] == "API" && t[2] == "STREAM" && len(t) > 3 && t[3] == "MSG":
		return at(5)
	case t[1] == "API" && t[2] == "STREAM":
		return at(4)
	case t[1] == "API" && t[2] == "CONSUMER" && len(t) > 3 && (t[3] == "MSG" || t[3] == "DURABLE"):
		return at(5)
	case t[1] == "API" && t[2] == "CONSUMER":
		return at(4)
	case t[1] == "API" && t[2] == "DIRECT":
		return at(4)
	case (t[1] == "ACK" || t[1] == "FC") && t[2] == "*":
		return at(4)
	case t[1] == "ACK" || t[1] == "FC":
		return at(2)
	}
	return "", false
}

func TestNATSConfigs(t *testing.T) {
	d := load(t)
	single := d.natsServers["nats/single.conf"]
	if single == nil {
		t.Fatal("deploy/nats/single.conf is missing")
	}
	for rel := range d.natsIncludes {
		found := false
		for _, c := range d.natsServers {
			found = found || slices.Contains(c.includes, rel)
		}
		if !found {
			t.Errorf("deploy/%s is included by no server config", rel)
		}
	}
	needs := d.needs()
	streams := map[string]bool{d.subj.RequestStream(): true, d.subj.DeadLetterStream(): true, "KV_" + d.subj.LimitsBucket(): true, "KV_" + d.subj.PausesBucket(): true,
		"OBJ_" + d.subj.FilesBucket(): true, "KV_" + d.subj.BatchesBucket(): true, "KV_" + d.subj.BatchLinesBucket(): true}
	envDefault := d.env["LLMQ_MAX_BODY_BYTES"].def
	maxBody, err := strconv.Atoi(envDefault)
	if err != nil {
		t.Fatalf("LLMQ_MAX_BODY_BYTES default %q: %v", envDefault, err)
	}
	var clusterNames []string
	for rel, c := range d.natsServers {
		o := c.opts
		where := "deploy/" + rel
		if !o.JetStream || o.StoreDir == "" {
			t.Errorf("%s: JetStream with a file store (store_dir) is required", where)
		}
		if o.Port != 4222 || o.HTTPPort != 8222 {
			t.Errorf("%s: client port %d and monitoring port %d, want 4222 and 8222", where, o.Port, o.HTTPPort)
		}
		payload := int(o.MaxPayload)
		if payload == 0 {
			payload = server.MAX_PAYLOAD_SIZE
		}
		if payload < maxBody+8<<10 {
			t.Errorf("%s: max_payload %d leaves no room for a request of LLMQ_MAX_BODY_BYTES (%d by default) plus headers", where, payload, maxBody)
		}
		accounts := map[string]bool{}
		for role, n := range needs {
			u, ok := c.users[role]
			if !ok {
				t.Errorf("%s: no user %q", where, role)
				continue
			}
			accounts[u.Account] = true
			checkUser(t, where, u, n, true)
			for _, p := range slices.Concat(u.PubAllow, u.SubAllow) {
				if !strings.HasPrefix(p, "$") {
					continue
				}
				if p == "$JS.API.>" || p == ">" {
					t.Errorf("%s: user %s: %s is too broad; name the API calls", where, u.Name, p)
					continue
				}
				s, ok := jsStream(p)
				if !ok {
					t.Errorf("%s: user %s: unrecognised JetStream permission %s", where, u.Name, p)
				} else if s != "" && !streams[s] {
					t.Errorf("%s: user %s: %s names stream %q; llmq's are %v", where, u.Name, p, s, slices.Sorted(maps.Keys(streams)))
				}
			}
		}
		if len(c.users) != len(needs) {
			t.Errorf("%s: %d users, want exactly %d (%s)", where, len(c.users), len(needs), strings.Join(slices.Sorted(maps.Keys(needs)), ", "))
		}
		if len(accounts) != 1 || accounts["$G"] {
			t.Errorf("%s: the llmq users must share one named account, got %v", where, accounts)
		}
		if !reflect.DeepEqual(c.users, single.users) {
			t.Errorf("%s: users differ from deploy/nats/single.conf", where)
		}
		if rel == single.rel {
			if o.Cluster.Port != 0 || len(o.Routes) > 0 {
				t.Errorf("%s: a single server has no cluster", where)
			}
			continue
		}
		// A cluster node.
		clusterNames = append(clusterNames, o.ServerName)
		if o.Cluster.Port != 6222 {
			t.Errorf("%s: cluster port %d, want 6222", where, o.Cluster.Port)
		}
		var hosts []string
		for _, r := range o.Routes {
			if r.Port() != "6222" {
				t.Errorf("%s: route %s is not on port 6222", where, r)
			}
			hosts = append(hosts, r.Hostname())
		}
		slices.Sort(hosts)
		if want := []string{"nats-1", "nats-2", "nats-3"}; !slices.Equal(hosts, want) {
			t.Errorf("%s: routes to %v, want %v", where, hosts, want)
		}
		if !slices.Contains(hosts, o.ServerName) {
			t.Errorf("%s: server_name %q is not one of the route hosts %v", where, o.ServerName, hosts)
		}
		if !strings.Contains(d.text[rel], "replicas") {
			t.Errorf("%s: say that llmq_settings.replicas should be 3", where)
		}
	}
	slices.Sort(clusterNames)
	if !slices.Equal(clusterNames, []string{"nats-1", "nats-2", "nats-3"}) {
		t.Errorf("cluster nodes %v, want one config each for nats-1, nats-2 and nats-3", clusterNames)
	}
}

// TestPermissionCheckerFailsOnGaps makes sure the permission check above
// would notice a missing permission.
func TestPermissionCheckerFailsOnGaps(t *testing.T) {
	d := load(t)
	u := d.natsServers["nats/single.conf"].users[roleWorker]
	u.SubAllow = slices.DeleteFunc(slices.Clone(u.SubAllow), func(s string) bool { return s == d.subj.WakeWildcard() })
	rec := &recorder{}
	checkUser(rec, "probe", u, d.needs()[roleWorker], false)
	if len(rec.errs) == 0 {
		t.Error("checkUser did not notice a worker that may not subscribe to the wake-up hints")
	}
	// An admin that may not purge the dead letters, or may also purge the
	// requests.
	api := jetstream.DefaultAPIPrefix
	a := d.natsServers["nats/single.conf"].users[roleAdmin]
	a.PubAllow = slices.DeleteFunc(slices.Clone(a.PubAllow), func(s string) bool { return s == api+"STREAM.PURGE."+d.subj.DeadLetterStream() })
	rec = &recorder{}
	checkUser(rec, "probe", a, d.needs()[roleAdmin], false)
	if len(rec.errs) == 0 {
		t.Error("checkUser did not notice an admin that may not purge the dead letters")
	}
	a.PubAllow = append(a.PubAllow, api+"STREAM.PURGE."+d.subj.DeadLetterStream(), api+"STREAM.PURGE."+d.subj.RequestStream())
	rec = &recorder{}
	checkUser(rec, "probe", a, d.needs()[roleAdmin], true)
	if len(rec.errs) != 1 {
		t.Errorf("checkUser on an admin that may purge the requests: %q, want one error", rec.errs)
	}
	if covers("llmq.req.>", "llmq.wake.0.x") || !covers("llmq.req.>", "llmq.req.0.x") || covers("a.*", "a.>") || !covers("a.>", "a.*.b") {
		t.Error("covers is wrong")
	}
}

type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// ---------------------------------------------------------------------------
// Dockerfile

type dockerfile struct {
	stages []dfStage
	env    map[string]string // final stage's ENV
	copies map[string]string // final stage's COPY: destination -> source ("stage:path" for --from)
	bins   map[string]string // final image's binaries: path -> command name (cmd/<name>)

	builds     []goBuild
	built      map[string]string // go build output -> command name
	localCopy  []dfCopy          // COPY from the build context, any stage
	cgoOff     bool
	user       string
	entrypoint string
	exposed    []string
	problems   []string
}

type dfStage struct{ image, name string }

type goBuild struct {
	line               int
	cmd, out, pkg      string
	trimpath, stripped bool
}

type dfCopy struct {
	line int
	src  string
}

func parseDockerfile(text string) (*dockerfile, error) {
	df := &dockerfile{env: map[string]string{}, copies: map[string]string{}, bins: map[string]string{}, built: map[string]string{}}
	type instr struct {
		line      int
		cmd, args string
	}
	var instrs []instr
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(text, "\n") {
		trim := strings.TrimSpace(line)
		if trim == "" || strings.HasPrefix(trim, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trim, "\\") {
			cur.WriteString(strings.TrimSuffix(trim, "\\") + " ")
			continue
		}
		cur.WriteString(trim)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		cur.Reset()
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			f := strings.Fields(args)
			st := dfStage{image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			df.stages = append(df.stages, st)
		}
		if len(df.stages) == 0 {
			return nil, fmt.Errorf("line %d: %s before FROM", start, cmd)
		}
		instrs = append(instrs, instr{line: start, cmd: cmd, args: strings.TrimSpace(args)})
	}
	if cur.Len() > 0 {
		return nil, errors.New("the last instruction ends with a line continuation")
	}
	if len(df.stages) < 2 {
		return nil, errors.New("want a multi-stage build")
	}
	stage := -1
	for _, in := range instrs {
		if in.cmd == "FROM" {
			stage++
		}
		final := stage == len(df.stages)-1
		switch in.cmd {
		case "ENV":
			for k, v := range envPairs(in.args) {
				if k == "CGO_ENABLED" && v == "0" && !final {
					df.cgoOff = true
				}
				if final {
					df.env[k] = v
				}
			}
		case "RUN":
			for _, part := range regexp.MustCompile(`&&|;`).Split(in.args, -1) {
				w := words(part)
				if len(w) > 0 && strings.HasPrefix(w[0], "CGO_ENABLED=0") {
					df.cgoOff = true
				}
				i := slices.Index(w, "go")
				if i < 0 || i+1 >= len(w) || w[i+1] != "build" {
					continue
				}
				b := goBuild{line: in.line, cmd: strings.TrimSpace(part)}
				for j := i + 2; j < len(w); j++ {
					switch {
					case w[j] == "-trimpath":
						b.trimpath = true
					case w[j] == "-o" && j+1 < len(w):
						b.out = w[j+1]
						j++
					case w[j] == "-ldflags" && j+1 < len(w):
						f := strings.Fields(w[j+1])
						b.stripped = slices.Contains(f, "-s") && slices.Contains(f, "-w")
						j++
					case strings.HasPrefix(w[j], "./cmd/"):
						b.pkg = strings.TrimPrefix(w[j], "./cmd/")
					}
				}
				df.builds = append(df.builds, b)
				df.built[b.out] = b.pkg
			}
		case "COPY":
			w := words(in.args)
			var from string
			for len(w) > 0 && strings.HasPrefix(w[0], "--") {
				if v, ok := strings.CutPrefix(w[0], "--from="); ok {
					from = v
				}
				w = w[1:]
			}
			if len(w) < 2 {
				df.problems = append(df.problems, fmt.Sprintf("line %d: COPY needs a source and a destination", in.line))
				continue
			}
			srcs, dest := w[:len(w)-1], w[len(w)-1]
			for _, s := range srcs {
				if from != "" {
					s = from + ":" + s
				} else if s != "." {
					df.localCopy = append(df.localCopy, dfCopy{line: in.line, src: s})
				}
				if final {
					df.copies[dest] = s
				}
			}
		case "USER":
			if final {
				df.user = in.args
			}
		case "EXPOSE":
			df.exposed = append(df.exposed, strings.Fields(in.args)...)
		case "ENTRYPOINT":
			if final {
				df.entrypoint = in.args
			}
		}
	}
	for dest, src := range df.copies {
		if _, file, ok := strings.Cut(src, ":"); ok {
			if name, ok := df.built[file]; ok {
				df.bins[dest] = name
			}
		}
	}
	return df, nil
}

// words splits s at spaces outside quotes and removes the quotes.
func words(s string) []string {
	var out []string
	var b strings.Builder
	quote, in := rune(0), false
	for _, c := range s {
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			b.WriteRune(c)
		case c == '"' || c == '\'':
			quote, in = c, true
		case c == ' ' || c == '\t':
			if in || b.Len() > 0 {
				out = append(out, b.String())
			}
			b.Reset()
			in = false
		default:
			b.WriteRune(c)
			in = true
		}
	}
	if in || b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

func parseIgnore(text string) []string {
	var out []string
	for line := range strings.Lines(text) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, strings.TrimPrefix(line, "/"))
		}
	}
	return out
}

// ignored reports whether a .dockerignore pattern excludes rel or one of its parents.
func ignored(patterns []string, rel string) bool {
	parts := strings.Split(rel, "/")
	for _, p := range patterns {
		if strings.HasPrefix(p, "!") {
			continue
		}
		anyDepth := strings.HasPrefix(p, "**/")
		p = strings.TrimPrefix(p, "**/")
		for i := 1; i <= len(parts); i++ {
			prefix := strings.Join(parts[:i], "/")
			if ok, _ := path.Match(p, prefix); ok {
				return true
			}
			if anyDepth {
				for j := 1; j < i; j++ {
					if ok, _ := path.Match(p, strings.Join(parts[j:i], "/")); ok {
						return true
					}
				}
			}
		}
	}
	return false
}

func TestDockerfile(t *testing.T) {
	d := load(t)
	df := d.docker
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(d.goMod)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	goVersion := m[1]

	builder, final := df.stages[0], df.stages[len(df.stages)-1]
	if !imageTagIs(builder.image, "golang", goVersion) {
		t.Errorf("Dockerfile: builder image %s, want golang:%s (go.mod)", builder.image, goVersion)
	}
	if builder.name == "" {
		t.Error("Dockerfile: name the builder stage (FROM ... AS build)")
	}
	if final.image != "gcr.io/distroless/static-debian12:nonroot" && final.image != "scratch" {
		t.Errorf("Dockerfile: final image %s, want gcr.io/distroless/static-debian12:nonroot", final.image)
	}

	for _, p := range df.problems {
		t.Errorf("Dockerfile: %s", p)
	}
	for _, b := range df.builds {
		if !b.trimpath || !b.stripped || b.out == "" || b.pkg == "" {
			t.Errorf("Dockerfile:%d: want go build -trimpath -ldflags \"-s -w\" -o <file> ./cmd/<name>, got %q", b.line, b.cmd)
		}
	}
	if !df.cgoOff {
		t.Error("Dockerfile: the build stage must set CGO_ENABLED=0 (static binaries for distroless/static)")
	}
	cmds, err := os.ReadDir(filepath.Join(d.root, "cmd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range cmds {
		if e.IsDir() && !slices.Contains(slices.Collect(maps.Values(df.built)), e.Name()) {
			t.Errorf("Dockerfile: ./cmd/%s is not built", e.Name())
		}
	}
	for _, c := range df.localCopy {
		if _, err := os.Stat(filepath.Join(d.root, filepath.FromSlash(c.src))); err != nil {
			t.Errorf("Dockerfile:%d: COPY source %s does not exist in the repository (the build context)", c.line, c.src)
		}
		if ignored(d.ignore, c.src) {
			t.Errorf("Dockerfile:%d: COPY source %s is excluded by Dockerfile.dockerignore", c.line, c.src)
		}
	}
	for dest, src := range df.copies {
		stage, file, ok := strings.Cut(src, ":")
		if !ok {
			continue
		}
		if stage != builder.name {
			t.Errorf("Dockerfile: COPY --from=%s: no such stage", stage)
		}
		if df.bins[dest] == "" {
			t.Errorf("Dockerfile: copies %s, which no go build writes", file)
		}
	}
	var exposed []int
	for _, p := range df.exposed {
		n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
		if err != nil {
			t.Errorf("Dockerfile: EXPOSE %s", p)
		}
		exposed = append(exposed, n)
	}
	for _, dir := range []string{"go.mod", "go.sum", "cmd", "internal", "pkg"} {
		if ignored(d.ignore, dir) {
			t.Errorf("Dockerfile.dockerignore excludes %s, which the build needs", dir)
		}
	}

	// The image runs the gateway, with the config it ships and the listen port it exposes.
	var ep []string
	if err := json.Unmarshal([]byte(df.entrypoint), &ep); err != nil || len(ep) == 0 {
		t.Fatalf("Dockerfile: ENTRYPOINT %q: want the exec form [\"/path/to/gateway\"]", df.entrypoint)
	}
	if df.bins[ep[0]] != "gateway" {
		t.Errorf("Dockerfile: ENTRYPOINT %s is not the gateway binary (%v)", ep[0], df.bins)
	}
	worker := df.binary("worker")
	if worker == "" || !strings.Contains(d.text["Dockerfile"], "--entrypoint "+worker) {
		t.Errorf("Dockerfile: document how to run the worker (--entrypoint %s)", worker)
	}
	cfgPath := df.env["LLMQ_CONFIG"]
	if src := df.copies[cfgPath]; cfgPath == "" || src == "" {
		t.Errorf("Dockerfile: LLMQ_CONFIG=%q is not a file the image contains", cfgPath)
	} else if _, err := config.Load(filepath.Join(d.root, filepath.FromSlash(src)), anyEnv); err != nil {
		t.Errorf("Dockerfile: the config it ships (%s): %v", src, err)
	}
	env, err := d.envFrom(df.env)
	if err != nil {
		t.Fatalf("Dockerfile ENV: %v", err)
	}
	if err := env.Validate(); err != nil {
		t.Errorf("Dockerfile ENV: %v", err)
	}
	listen := portOf(t, "Dockerfile LLMQ_LISTEN", env.Listen)
	if def := portOf(t, "config.Env default LLMQ_LISTEN", d.env["LLMQ_LISTEN"].def); listen != def {
		t.Errorf("Dockerfile: LLMQ_LISTEN port %d, config.Env's default is %d", listen, def)
	}
	if !slices.Contains(exposed, listen) {
		t.Errorf("Dockerfile: EXPOSE %v does not include the gateway port %d", exposed, listen)
	}
	if df.user != "nonroot" && df.user != "65532" && df.user != "65532:65532" {
		t.Errorf("Dockerfile: USER %q, want nonroot (65532)", df.user)
	}
}

func (df *dockerfile) binary(name string) string {
	for p, n := range df.bins {
		if n == name {
			return p
		}
	}
	return ""
}

// envPairs parses the arguments of a Dockerfile ENV.
func envPairs(args string) map[string]string {
	out := map[string]string{}
	w := words(args)
	if len(w) > 0 && !strings.Contains(w[0], "=") {
		out[w[0]] = strings.Join(w[1:], " ")
		return out
	}
	for _, kv := range w {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// imageTagIs reports whether image is repo:<version>[.patch][-variant].
func imageTagIs(image, repo, version string) bool {
	tag, ok := strings.CutPrefix(image, repo+":")
	if !ok {
		return false
	}
	rest, ok := strings.CutPrefix(tag, version)
	return ok && (rest == "" || rest[0] == '.' || rest[0] == '-')
}

// natsServerVersion is the major.minor of the nats-server module in go.mod:
// the release the code is built and tested with.
func (d *deploy) natsServerVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*github\.com/nats-io/nats-server/v2 v(\d+)\.(\d+)\.`).FindStringSubmatch(d.goMod)
	if m == nil {
		t.Fatal("go.mod does not require github.com/nats-io/nats-server/v2")
	}
	return m[1] + "." + m[2]
}

// ---------------------------------------------------------------------------
// compose.yaml

// interpolate resolves compose's ${VAR}, ${VAR:?err}, ${VAR:-default} and $VAR.
func interpolate(s string, vars map[string]string) (string, error) {
	re := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)
	var err error
	out := re.ReplaceAllStringFunc(s, func(m string) string {
		g := re.FindStringSubmatch(m)
		name := g[1] + g[4]
		if v, ok := vars[name]; ok {
			return v
		}
		if strings.HasSuffix(g[2], "-") {
			return g[3]
		}
		err = fmt.Errorf("%s is not set", name)
		return ""
	})
	return out, err
}

// varsIn returns the variables a compose value refers to.
func varsIn(s string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`).FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

type composeService struct {
	name string
	raw  map[string]any
	role string            // gateway, worker or admin (llmqctl), for llmq services
	env  map[string]string // llmq services: the image's ENV, then environment, interpolated
}

func (d *deploy) composeServices(t *testing.T) (natsSvc *composeService, llmq []*composeService) {
	t.Helper()
	services, _ := d.compose["services"].(map[string]any)
	if len(services) == 0 {
		t.Fatal("compose.yaml: no services")
	}
	for name, v := range services {
		raw, _ := v.(map[string]any)
		svc := &composeService{name: name, raw: raw}
		image, _ := raw["image"].(string)
		build, _ := raw["build"].(map[string]any)
		switch {
		case strings.HasPrefix(image, "nats:"):
			if natsSvc != nil {
				t.Errorf("compose.yaml: two NATS services")
			}
			natsSvc = svc
		case build != nil && build["dockerfile"] == "deploy/Dockerfile" && build["context"] == "..":
			svc.env = maps.Clone(d.docker.env)
			environment := map[string]string{}
			switch e := raw["environment"].(type) {
			case map[string]any:
				for k, v := range e {
					environment[k] = fmt.Sprint(v)
				}
			case []any:
				for _, kv := range e {
					k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
					environment[k] = v
				}
			}
			for k, v := range environment {
				s, err := interpolate(v, d.pwValue)
				if err != nil {
					t.Errorf("compose.yaml: %s: %s: %v", name, k, err)
				}
				svc.env[k] = s
			}
			entry := d.docker.bins[firstWord(raw["entrypoint"])]
			if raw["entrypoint"] == nil {
				entry = "gateway"
			}
			svc.role = roleOf[entry]
			if svc.role == "" {
				t.Errorf("compose.yaml: %s: entrypoint %v is not the gateway, the worker or llmqctl", name, raw["entrypoint"])
			}
			llmq = append(llmq, svc)
		default:
			t.Errorf("compose.yaml: service %s is neither NATS nor built from deploy/Dockerfile", name)
		}
	}
	if natsSvc == nil {
		t.Fatal("compose.yaml: no NATS service (image nats:...)")
	}
	return natsSvc, llmq
}

func firstWord(v any) string {
	switch e := v.(type) {
	case []any:
		if len(e) > 0 {
			return fmt.Sprint(e[0])
		}
	case string:
		if f := strings.Fields(e); len(f) > 0 {
			return f[0]
		}
	}
	return ""
}

func strList(v any) []string {
	var out []string
	switch e := v.(type) {
	case []any:
		for _, x := range e {
			out = append(out, fmt.Sprint(x))
		}
	case string:
		out = strings.Fields(e)
	}
	return out
}

func TestCompose(t *testing.T) {
	d := load(t)
	natsSvc, llmq := d.composeServices(t)
	want := d.natsServerVersion(t)
	if image := natsSvc.raw["image"].(string); !imageTagIs(image, "nats", want) {
		t.Errorf("compose.yaml: NATS image %s, want nats:%s (the nats-server of go.mod)", image, want)
	}
	// The server config: -c <file>, mounted with everything it includes.
	args := strList(natsSvc.raw["command"])
	i := slices.IndexFunc(args, func(s string) bool { return s == "-c" || s == "--config" })
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("compose.yaml: %s: command %v does not name a config file (-c)", natsSvc.name, args)
	}
	mounts := map[string]string{} // target -> source relative to deploy/
	for _, v := range strList(natsSvc.raw["volumes"]) {
		parts := strings.Split(v, ":")
		src := parts[0]
		if strings.HasPrefix(src, ".") {
			src = path.Clean(src)
		}
		if len(parts) > 1 {
			mounts[parts[1]] = src
		}
	}
	confTarget := args[i+1]
	conf := d.natsServers[mounts[confTarget]]
	if conf == nil {
		t.Fatalf("compose.yaml: %s: %s is not mounted from a server config of deploy/nats", natsSvc.name, confTarget)
	}
	for _, inc := range conf.includes {
		target := path.Join(path.Dir(confTarget), strings.TrimPrefix(inc, path.Dir(conf.rel)+"/"))
		if mounts[target] != inc {
			t.Errorf("compose.yaml: %s: %s includes %s, which is not mounted at %s", natsSvc.name, conf.rel, inc, target)
		}
	}
	if _, ok := mounts[conf.opts.StoreDir]; !ok {
		t.Errorf("compose.yaml: %s: no volume at the JetStream store_dir %s", natsSvc.name, conf.opts.StoreDir)
	}
	if hc := strings.Join(strList(get(natsSvc.raw, "healthcheck", "test")), " "); !strings.Contains(hc, fmt.Sprintf(":%d/healthz", conf.opts.HTTPPort)) {
		t.Errorf("compose.yaml: %s: the healthcheck should ask /healthz on the monitoring port %d", natsSvc.name, conf.opts.HTTPPort)
	}
	natsEnv, _ := natsSvc.raw["environment"].(map[string]any)
	for _, u := range conf.users {
		if !slices.Contains(varsIn(fmt.Sprint(natsEnv[u.PasswordVar])), u.PasswordVar) {
			t.Errorf("compose.yaml: %s: environment must pass %s (the password of user %s)", natsSvc.name, u.PasswordVar, u.Name)
		}
	}

	needs := d.needs()
	roles := map[string]int{}
	admins := 0
	for _, svc := range llmq {
		where := "compose.yaml: " + svc.name
		n := 1
		if r, ok := get(svc.raw, "deploy", "replicas").(int); ok {
			n = r
		}
		roles[svc.role] += n
		env, err := d.envFrom(svc.env)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if err := env.Validate(); err != nil {
			t.Errorf("%s: %v", where, err)
		}
		u, err := url.Parse(env.NATSURL)
		if err != nil || u.Hostname() != natsSvc.name || u.Port() != strconv.Itoa(conf.opts.Port) {
			t.Errorf("%s: LLMQ_NATS_URL %q, want nats://%s:%d", where, env.NATSURL, natsSvc.name, conf.opts.Port)
		}
		if dep, _ := svc.raw["depends_on"].(map[string]any); dep[natsSvc.name] == nil {
			t.Errorf("%s: must depend on %s", where, natsSvc.name)
		}
		if svc.role == roleAdmin && env.NATSUser != roleAdmin {
			t.Errorf("%s: LLMQ_NATS_USER %q, want %s (llmqctl's user)", where, env.NATSUser, roleAdmin)
		}
		user, ok := conf.users[env.NATSUser]
		if !ok {
			t.Errorf("%s: LLMQ_NATS_USER %q is not a user of %s", where, env.NATSUser, conf.rel)
		} else {
			checkUser(t, where+" (LLMQ_NATS_USER)", user, needs[svc.role], false)
			if env.NATSPassword != d.pwValue[user.PasswordVar] {
				t.Errorf("%s: LLMQ_NATS_PASSWORD must be ${%s}, the password of user %s", where, user.PasswordVar, user.Name)
			}
		}
		if svc.role == roleAdmin {
			// A command run on demand: "up" must not start it.
			if len(strList(svc.raw["profiles"])) == 0 {
				t.Errorf("%s: give it a profile, so that \"docker compose up\" does not run it", where)
			}
			if svc.raw["restart"] != nil {
				t.Errorf("%s: a command must not restart", where)
			}
			run := "docker compose -f deploy/compose.yaml run --rm " + svc.name
			for _, verb := range []string{"status", "reload"} {
				if !strings.Contains(d.text["README.md"], run+" "+verb) || !strings.Contains(d.text["compose.yaml"], run+" "+verb) {
					t.Errorf("%s: README.md and compose.yaml must show how to run it (%s %s)", where, run, verb)
				}
			}
			admins++
			continue
		}
		if g, ok := svc.raw["stop_grace_period"].(string); !ok {
			t.Errorf("%s: set stop_grace_period above LLMQ_SHUTDOWN_TIMEOUT (%s)", where, env.ShutdownTimeout)
		} else if dur, err := time.ParseDuration(g); err != nil || dur <= env.ShutdownTimeout {
			t.Errorf("%s: stop_grace_period %s must exceed LLMQ_SHUTDOWN_TIMEOUT (%s)", where, g, env.ShutdownTimeout)
		}
		switch svc.role {
		case roleGateway:
			listen := portOf(t, where+" LLMQ_LISTEN", env.Listen)
			found := false
			for _, p := range strList(svc.raw["ports"]) {
				parts := strings.Split(p, ":")
				found = found || parts[len(parts)-1] == strconv.Itoa(listen)
			}
			if !found {
				t.Errorf("%s: the gateway port %d is not published", where, listen)
			}
		case roleWorker:
			if env.MetricsListen == "" {
				t.Errorf("%s: set LLMQ_METRICS_LISTEN", where)
			}
		}
	}
	if roles[roleGateway] < 1 || roles[roleWorker] < 2 {
		t.Errorf("compose.yaml: %d gateway(s) and %d worker(s), want at least 1 and 2", roles[roleGateway], roles[roleWorker])
	}
	if admins != 1 {
		t.Errorf("compose.yaml: %d llmqctl services, want one (entrypoint /usr/local/bin/llmqctl, user %s)", admins, roleAdmin)
	}
	// Reloading by signal: the services that reload on SIGHUP.
	var hup []string
	for _, svc := range llmq {
		if svc.role == roleGateway || svc.role == roleWorker {
			hup = append(hup, svc.name)
		}
	}
	slices.Sort(hup)
	if kill := "docker compose -f deploy/compose.yaml kill -s HUP " + strings.Join(hup, " "); !strings.Contains(d.text["README.md"], kill) {
		t.Errorf("README.md: show the reload by signal: %s", kill)
	}
}

// get walks nested YAML/JSON maps.
func get(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// ---------------------------------------------------------------------------
// Kubernetes

type k8sObj struct {
	file, kind, name, namespace string
	raw                         map[string]any
}

func parseManifests(rel, text string) ([]k8sObj, error) {
	var out []k8sObj
	dec := yaml.NewDecoder(strings.NewReader(text))
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if m == nil {
			continue
		}
		o := k8sObj{file: rel, raw: m}
		o.kind, _ = m["kind"].(string)
		o.name, _ = get(m, "metadata", "name").(string)
		o.namespace, _ = get(m, "metadata", "namespace").(string)
		if o.kind == "" || o.name == "" || m["apiVersion"] == nil {
			return nil, fmt.Errorf("a document without apiVersion, kind or metadata.name")
		}
		out = append(out, o)
	}
}

func (d *deploy) objects(kind string) []k8sObj {
	var out []k8sObj
	for _, o := range d.k8s {
		if o.kind == kind {
			out = append(out, o)
		}
	}
	return out
}

func (d *deploy) object(kind, name string) *k8sObj {
	for _, o := range d.k8s {
		if o.kind == kind && o.name == name {
			return &o
		}
	}
	return nil
}

func labelsMatch(selector, labels any) bool {
	sel, _ := selector.(map[string]any)
	lab, _ := labels.(map[string]any)
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lab[k] != v {
			return false
		}
	}
	return true
}

// k8sContainer is the llmq container of a Deployment or a Job, with what the test derives from it.
type k8sContainer struct {
	deploy    k8sObj
	raw       map[string]any
	role      string
	env       map[string]string // the image's ENV, envFrom ConfigMaps, env
	secretRef map[string][2]string
	config    string // the config file it reads (from the mounted ConfigMap)
	ports     map[string]int
}

func (d *deploy) containers(t *testing.T) []*k8sContainer {
	t.Helper()
	var out []*k8sContainer
	for _, dep := range slices.Concat(d.objects("Deployment"), d.objects("Job")) {
		where := dep.file + ": " + dep.name
		cs, _ := get(dep.raw, "spec", "template", "spec", "containers").([]any)
		if len(cs) != 1 {
			t.Errorf("%s: want one container", where)
			continue
		}
		raw := cs[0].(map[string]any)
		c := &k8sContainer{deploy: dep, raw: raw, env: maps.Clone(d.docker.env), secretRef: map[string][2]string{}, ports: map[string]int{}}
		if image, _ := raw["image"].(string); path.Base(strings.Split(image, ":")[0]) != "llmq" {
			t.Errorf("%s: image %q is not the llmq image of deploy/Dockerfile", where, image)
		}
		c.role = roleGateway
		if cmd := firstWord(raw["command"]); cmd != "" {
			c.role = roleOf[d.docker.bins[cmd]]
		}
		switch {
		case dep.kind == "Job" && c.role != roleAdmin:
			t.Errorf("%s: a Job runs llmqctl, not %v", where, raw["command"])
		case dep.kind == "Deployment" && c.role != roleGateway && c.role != roleWorker:
			t.Errorf("%s: command %v is neither the gateway nor the worker", where, raw["command"])
		}
		for _, ef := range asList(raw["envFrom"]) {
			if name, ok := get(ef, "configMapRef", "name").(string); ok {
				cm := d.object("ConfigMap", name)
				if cm == nil {
					t.Errorf("%s: envFrom ConfigMap %s does not exist", where, name)
					continue
				}
				data, _ := cm.raw["data"].(map[string]any)
				for k, v := range data {
					c.env[k] = fmt.Sprint(v)
				}
			}
		}
		for _, e := range asList(raw["env"]) {
			name, _ := get(e, "name").(string)
			switch {
			case get(e, "value") != nil:
				c.env[name] = fmt.Sprint(get(e, "value"))
			case get(e, "valueFrom", "secretKeyRef") != nil:
				ref := [2]string{fmt.Sprint(get(e, "valueFrom", "secretKeyRef", "name")), fmt.Sprint(get(e, "valueFrom", "secretKeyRef", "key"))}
				c.secretRef[name] = ref
				c.env[name] = "from-secret"
			default:
				t.Errorf("%s: env %s: want a value or a secretKeyRef", where, name)
			}
		}
		for _, p := range asList(raw["ports"]) {
			n, _ := get(p, "containerPort").(int)
			name, _ := get(p, "name").(string)
			c.ports[name] = n
		}
		// The config file: LLMQ_CONFIG must be a key of a mounted ConfigMap.
		cfgPath := c.env["LLMQ_CONFIG"]
		for _, vm := range asList(raw["volumeMounts"]) {
			mp, _ := get(vm, "mountPath").(string)
			if path.Dir(cfgPath) != mp {
				continue
			}
			for _, v := range asList(get(dep.raw, "spec", "template", "spec", "volumes")) {
				if get(v, "name") != get(vm, "name") || get(v, "configMap") == nil {
					continue
				}
				cm := d.object("ConfigMap", fmt.Sprint(get(v, "configMap", "name")))
				key := path.Base(cfgPath)
				for _, it := range asList(get(v, "configMap", "items")) {
					if get(it, "path") == key {
						key = fmt.Sprint(get(it, "key"))
					}
				}
				if cm != nil {
					c.config, _ = get(cm.raw, "data", key).(string)
				}
			}
		}
		if c.config == "" {
			t.Errorf("%s: LLMQ_CONFIG=%q is not a file of a mounted ConfigMap", where, cfgPath)
		}
		out = append(out, c)
	}
	return out
}

func asList(v any) []any { l, _ := v.([]any); return l }

// probePort resolves a probe's or Service's port (a name or a number).
func (c *k8sContainer) port(v any) int {
	if n, ok := v.(int); ok {
		return n
	}
	return c.ports[fmt.Sprint(v)]
}

// natsAccountUsers returns the users of the Helm values' merged accounts.
func (d *deploy) helmUsers(t *testing.T) map[string]natsUser {
	t.Helper()
	out := map[string]natsUser{}
	accounts, _ := get(d.values, "config", "merge", "accounts").(map[string]any)
	pw := regexp.MustCompile(`^<<\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*>>$`)
	for acc, a := range accounts {
		for _, uv := range asList(get(a, "users")) {
			u := natsUser{Account: acc}
			u.Name, _ = get(uv, "user").(string)
			if m := pw.FindStringSubmatch(fmt.Sprint(get(uv, "password"))); m != nil {
				u.PasswordVar = m[1]
			} else {
				t.Errorf("k8s/nats-values.yaml: user %s: password must be << $VARIABLE >>", u.Name)
			}
			list := func(keys ...string) []string {
				var s []string
				for _, x := range asList(get(uv, append([]string{"permissions"}, keys...)...)) {
					s = append(s, fmt.Sprint(x))
				}
				return sorted(s)
			}
			u.PubAllow, u.PubDeny = list("publish", "allow"), list("publish", "deny")
			u.SubAllow, u.SubDeny = list("subscribe", "allow"), list("subscribe", "deny")
			u.Responses, _ = get(uv, "permissions", "allow_responses").(bool)
			out[u.Name] = u
		}
	}
	return out
}

// secretCommand returns the "create secret generic name" command of a
// text, with its continuation lines ("" if there is none).
func secretCommand(text, name string) string {
	i := strings.Index(text, "create secret generic "+name+" ")
	if i < 0 {
		return ""
	}
	var b strings.Builder
	for line := range strings.Lines(text[i:]) {
		b.WriteString(line)
		if !strings.HasSuffix(strings.TrimSpace(line), `\`) {
			break
		}
	}
	return b.String()
}

func intOr(v any, def int) int {
	if n, ok := v.(int); ok {
		return n
	}
	return def
}

func TestKubernetes(t *testing.T) {
	d := load(t)
	single := d.natsServers["nats/single.conf"]
	ns := d.objects("Namespace")
	if len(ns) != 1 {
		t.Fatalf("deploy/k8s: want one Namespace, got %d", len(ns))
	}
	known := map[string]bool{"Namespace": true, "ConfigMap": true, "Deployment": true, "Job": true, "Service": true, "PodDisruptionBudget": true, "ScaledObject": true}
	for _, o := range d.k8s {
		if !known[o.kind] {
			t.Errorf("%s: %s %s: deploycheck does not know this kind; add its checks", o.file, o.kind, o.name)
		}
		if o.kind != "Namespace" && o.namespace != ns[0].name {
			t.Errorf("%s: %s %s is in namespace %q, want %q", o.file, o.kind, o.name, o.namespace, ns[0].name)
		}
	}
	// kustomization.yaml lists every manifest but the Jobs, which an
	// operator creates when needed (llmqctl).
	var manifests, jobs []string
	for _, rel := range d.files {
		if kind(rel) != "k8s" {
			continue
		}
		onlyJobs := true
		for _, o := range d.k8s {
			onlyJobs = onlyJobs && (o.file != rel || o.kind == "Job")
		}
		if onlyJobs {
			jobs = append(jobs, path.Base(rel))
		} else {
			manifests = append(manifests, path.Base(rel))
		}
	}
	for _, o := range d.objects("Job") {
		if !slices.Contains(jobs, path.Base(o.file)) {
			t.Errorf("%s: Job %s: keep Jobs in files of their own, out of kustomization.yaml", o.file, o.name)
		}
	}
	var listed []string
	for _, r := range asList(d.kustomize["resources"]) {
		listed = append(listed, fmt.Sprint(r))
	}
	if !slices.Equal(sorted(listed), sorted(manifests)) {
		t.Errorf("k8s/kustomization.yaml: resources %v, want %v", sorted(listed), sorted(manifests))
	}

	// The NATS Helm values: a three-node JetStream cluster with llmq's users.
	v := d.values
	replicas := intOr(get(v, "config", "cluster", "replicas"), 0)
	if get(v, "config", "cluster", "enabled") != true || replicas != 3 {
		t.Errorf("k8s/nats-values.yaml: want config.cluster.enabled: true and replicas: 3")
	}
	for _, k := range [][]string{{"jetstream", "enabled"}, {"jetstream", "fileStore", "enabled"}, {"jetstream", "fileStore", "pvc", "enabled"}, {"monitor", "enabled"}} {
		if get(v, append([]string{"config"}, k...)...) != true {
			t.Errorf("k8s/nats-values.yaml: config.%s must be true", strings.Join(k, "."))
		}
	}
	if want := d.natsServerVersion(t); !imageTagIs("nats:"+fmt.Sprint(get(v, "container", "image", "tag")), "nats", want) {
		t.Errorf("k8s/nats-values.yaml: container.image.tag %v, want %s (the nats-server of go.mod)", get(v, "container", "image", "tag"), want)
	}
	helmUsers := d.helmUsers(t)
	if !reflect.DeepEqual(helmUsers, single.users) {
		t.Errorf("k8s/nats-values.yaml: the accounts differ from deploy/nats/accounts.conf:\n helm: %+v\n conf: %+v", helmUsers, single.users)
	}
	helmEnv, _ := get(v, "container", "env").(map[string]any)
	for _, u := range helmUsers {
		if get(helmEnv[u.PasswordVar], "valueFrom", "secretKeyRef", "key") != u.PasswordVar {
			t.Errorf("k8s/nats-values.yaml: container.env must set %s from a Secret key of that name", u.PasswordVar)
		}
	}
	natsPort := intOr(get(v, "config", "nats", "port"), 4222)
	monitorPort := intOr(get(v, "config", "monitor", "port"), 8222)

	// The llmq config of the ConfigMap.
	cs := d.containers(t)
	var cfg *config.Config
	for _, c := range cs {
		cc, err := config.Parse([]byte(c.config), anyEnv)
		if err != nil {
			t.Errorf("%s: %s: its config: %v", c.deploy.file, c.deploy.name, err)
			continue
		}
		if cfg != nil && !reflect.DeepEqual(cfg, cc) {
			t.Errorf("%s: %s reads another config than the other Deployments", c.deploy.file, c.deploy.name)
		}
		cfg = cc
	}
	if cfg == nil {
		t.Fatal("deploy/k8s: no Deployment with a readable config")
	}
	if cfg.LLMQ.Replicas != replicas {
		t.Errorf("deploy/k8s: llmq_settings.replicas is %d, but the NATS cluster has %d nodes", cfg.LLMQ.Replicas, replicas)
	}
	if cfg.LLMQ.SubjectPrefix != d.subj.Prefix() {
		t.Errorf("deploy/k8s: subject_prefix %q, the NATS permissions are for %q", cfg.LLMQ.SubjectPrefix, d.subj.Prefix())
	}

	needs := d.needs()
	probeHandler := func(ready error) http.Handler {
		return gateway.New(gateway.Options{
			Ready:          func(context.Context) error { return ready },
			MetricsHandler: promhttp.HandlerFor(prometheus.NewRegistry(), promhttp.HandlerOpts{}),
		}).Handler()
	}
	status := func(h http.Handler, p string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		return rec.Code
	}
	byRole := map[string]*k8sContainer{}
	var natsHost string
	for _, c := range cs {
		where := c.deploy.file + ": " + c.deploy.name
		byRole[c.role] = c
		spec := get(c.deploy.raw, "spec")
		env, err := d.envFrom(c.env)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if err := env.Validate(); err != nil {
			t.Errorf("%s: %v", where, err)
		}
		// NATS: the Helm release's client Service, and this role's user.
		u, err := url.Parse(env.NATSURL)
		if err != nil || u.Port() != strconv.Itoa(natsPort) || !strings.HasSuffix(u.Hostname(), ".svc.cluster.local") {
			t.Errorf("%s: LLMQ_NATS_URL %q, want nats://<service>.<namespace>.svc.cluster.local:%d", where, env.NATSURL, natsPort)
		} else {
			natsHost = u.Hostname()
		}
		user, ok := helmUsers[env.NATSUser]
		if !ok {
			t.Errorf("%s: LLMQ_NATS_USER %q is not a user of k8s/nats-values.yaml", where, env.NATSUser)
		} else {
			checkUser(t, where+" (LLMQ_NATS_USER)", user, needs[c.role], false)
			if ref := c.secretRef["LLMQ_NATS_PASSWORD"]; ref[1] != user.PasswordVar {
				t.Errorf("%s: LLMQ_NATS_PASSWORD must come from a Secret key %s (the password of user %s), got %v", where, user.PasswordVar, user.Name, ref)
			}
		}
		// The README's "kubectl create secret" commands fill every key used.
		for name, ref := range c.secretRef {
			if !strings.Contains(secretCommand(d.text["README.md"], ref[0]), ref[1]+"=") {
				t.Errorf("README.md: the command that creates the Secret %s must set %s (%s of %s)", ref[0], ref[1], name, where)
			}
		}
		if c.role == roleAdmin {
			if c.deploy.kind != "Job" {
				t.Errorf("%s: run llmqctl as a Job", where)
			}
			if env.NATSUser != roleAdmin {
				t.Errorf("%s: LLMQ_NATS_USER %q, want %s (llmqctl's user)", where, env.NATSUser, roleAdmin)
			}
			// One run: a purge or a replay must not repeat.
			if get(spec, "template", "spec", "restartPolicy") != "Never" || intOr(get(spec, "backoffLimit"), 6) != 0 {
				t.Errorf("%s: want restartPolicy: Never and backoffLimit: 0, so that a command runs once", where)
			}
			args := strList(c.raw["args"])
			if err := ctl.Run(context.Background(), args, config.Env{}, anyEnv, io.Discard, io.Discard); errors.Is(err, ctl.ErrUsage) || len(args) == 0 {
				t.Errorf("%s: args %v are not an llmqctl command: %v", where, args, err)
			}
			if create := "kubectl create -f deploy/" + c.deploy.file; !strings.Contains(d.text["README.md"], create) || !strings.Contains(d.text[c.deploy.file], create) {
				t.Errorf("%s: README.md and the file must show how to run it (%s)", where, create)
			}
			continue
		}
		if !labelsMatch(get(spec, "selector", "matchLabels"), get(spec, "template", "metadata", "labels")) {
			t.Errorf("%s: selector does not match the pod labels", where)
		}
		// Shutdown: the grace period covers the drain and the preStop pause.
		grace := intOr(get(spec, "template", "spec", "terminationGracePeriodSeconds"), 30)
		pause := intOr(get(c.raw, "lifecycle", "preStop", "sleep", "seconds"), 0)
		if time.Duration(grace)*time.Second <= env.ShutdownTimeout+time.Duration(pause)*time.Second {
			t.Errorf("%s: terminationGracePeriodSeconds %d must exceed LLMQ_SHUTDOWN_TIMEOUT (%s) plus the preStop pause (%ds)", where, grace, env.ShutdownTimeout, pause)
		}
		// Metrics: the scrape annotations name the port and path that serve them.
		metricsPort := 0
		switch c.role {
		case roleGateway:
			metricsPort = portOf(t, where+" LLMQ_LISTEN", env.Listen)
			if def := portOf(t, "default LLMQ_LISTEN", d.env["LLMQ_LISTEN"].def); metricsPort != def {
				t.Errorf("%s: LLMQ_LISTEN port %d, config.Env's default is %d", where, metricsPort, def)
			}
			if r := intOr(get(spec, "replicas"), 1); r < 2 {
				t.Errorf("%s: %d replicas, want at least 2", where, r)
			}
			if status(probeHandler(nil), "/metrics") != http.StatusOK {
				t.Errorf("%s: the gateway does not serve /metrics", where)
			}
			for _, probe := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
				p, ok := get(c.raw, probe, "httpGet", "path").(string)
				if !ok {
					if probe != "startupProbe" {
						t.Errorf("%s: no %s", where, probe)
					}
					continue
				}
				if got := c.port(get(c.raw, probe, "httpGet", "port")); got != metricsPort {
					t.Errorf("%s: %s on port %d, the gateway listens on %d", where, probe, got, metricsPort)
				}
				ready, notReady := status(probeHandler(nil), p), status(probeHandler(errors.New("down")), p)
				switch {
				case ready != http.StatusOK:
					t.Errorf("%s: %s path %s answers %d", where, probe, p, ready)
				case probe == "readinessProbe" && notReady == http.StatusOK:
					t.Errorf("%s: readinessProbe path %s does not report readiness (NATS, stream and consumers)", where, p)
				case probe != "readinessProbe" && notReady != http.StatusOK:
					t.Errorf("%s: %s path %s fails when NATS is down: a NATS outage would restart every gateway", where, probe, p)
				}
			}
		case roleWorker:
			if env.MetricsListen == "" {
				t.Errorf("%s: set LLMQ_METRICS_LISTEN", where)
				break
			}
			if _, ok := c.env["LLMQ_WORKER_SLOTS"]; !ok {
				t.Errorf("%s: set LLMQ_WORKER_SLOTS", where)
			}
			metricsPort = portOf(t, where+" LLMQ_METRICS_LISTEN", env.MetricsListen)
			for _, probe := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
				if p, ok := get(c.raw, probe, "httpGet", "path").(string); ok {
					if p != workerMetricsPath || c.port(get(c.raw, probe, "httpGet", "port")) != metricsPort {
						t.Errorf("%s: %s asks %s on port %v; a worker serves only %s on LLMQ_METRICS_LISTEN (%d)", where, probe, p, get(c.raw, probe, "httpGet", "port"), workerMetricsPath, metricsPort)
					}
				}
			}
		}
		if !slices.Contains(slices.Collect(maps.Values(c.ports)), metricsPort) {
			t.Errorf("%s: containerPort %d is not declared", where, metricsPort)
		}
		ann := get(spec, "template", "metadata", "annotations")
		if fmt.Sprint(get(ann, "prometheus.io/port")) != strconv.Itoa(metricsPort) || fmt.Sprint(get(ann, "prometheus.io/path")) != "/metrics" {
			t.Errorf("%s: prometheus.io annotations must name port %d and path /metrics", where, metricsPort)
		}
	}
	gw, wk := byRole[roleGateway], byRole[roleWorker]
	if gw == nil || wk == nil {
		t.Fatal("deploy/k8s: want a gateway and a worker Deployment")
	}
	if byRole[roleAdmin] == nil {
		t.Error("deploy/k8s: want a Job that runs llmqctl as user admin")
	}
	for _, u := range helmUsers {
		if !strings.Contains(secretCommand(d.text["README.md"], "nats-auth"), u.PasswordVar+"=") || !strings.Contains(secretCommand(d.text["k8s/nats-values.yaml"], "nats-auth"), u.PasswordVar+"=") {
			t.Errorf("README.md and k8s/nats-values.yaml: the command that creates the Secret nats-auth must set %s", u.PasswordVar)
		}
	}

	// The gateway Service.
	svcs := d.objects("Service")
	if len(svcs) != 1 {
		t.Fatalf("deploy/k8s: want one Service (the gateway's), got %d", len(svcs))
	}
	svc := svcs[0]
	if !labelsMatch(get(svc.raw, "spec", "selector"), get(gw.deploy.raw, "spec", "template", "metadata", "labels")) {
		t.Errorf("%s: Service %s does not select the gateway pods", svc.file, svc.name)
	}
	gwPort := portOf(t, "gateway LLMQ_LISTEN", gw.env["LLMQ_LISTEN"])
	for _, p := range asList(get(svc.raw, "spec", "ports")) {
		if intOr(get(p, "port"), 0) != gwPort || gw.port(get(p, "targetPort")) != gwPort {
			t.Errorf("%s: Service port %v -> %v, want %d -> the gateway's port %d", svc.file, get(p, "port"), get(p, "targetPort"), gwPort, gwPort)
		}
	}

	// PodDisruptionBudgets for both.
	covered := map[string]bool{}
	for _, pdb := range d.objects("PodDisruptionBudget") {
		n := 0
		for _, c := range cs {
			if labelsMatch(get(pdb.raw, "spec", "selector", "matchLabels"), get(c.deploy.raw, "spec", "template", "metadata", "labels")) {
				covered[c.role] = true
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: PodDisruptionBudget %s selects %d Deployments, want 1", pdb.file, pdb.name, n)
		}
	}
	if !covered[roleGateway] || !covered[roleWorker] {
		t.Errorf("deploy/k8s: PodDisruptionBudgets cover %v, want the gateway and the worker", covered)
	}

	// KEDA: one nats-jetstream trigger per band and model group, added up.
	sos := d.objects("ScaledObject")
	if len(sos) != 1 {
		t.Fatalf("deploy/k8s: want one ScaledObject, got %d", len(sos))
	}
	so := sos[0]
	where := so.file + ": " + so.name
	spec := get(so.raw, "spec")
	if get(spec, "scaleTargetRef", "name") != wk.deploy.name {
		t.Errorf("%s: scales %v, want the worker Deployment %s", where, get(spec, "scaleTargetRef", "name"), wk.deploy.name)
	}
	if intOr(get(spec, "minReplicaCount"), -1) != 1 || intOr(get(spec, "maxReplicaCount"), -1) != 20 {
		t.Errorf("%s: want minReplicaCount 1 and maxReplicaCount 20", where)
	}
	if slots := wk.env["LLMQ_WORKER_SLOTS"]; fmt.Sprint(get(spec, "advanced", "scalingModifiers", "target")) != slots {
		t.Errorf("%s: scalingModifiers.target %v, want LLMQ_WORKER_SLOTS (%s): a lag counts waiting and in-flight requests", where, get(spec, "advanced", "scalingModifiers", "target"), slots)
	}
	account := ""
	for _, u := range helmUsers {
		account = u.Account
	}
	release, namespace, _ := strings.Cut(natsHost, ".")
	namespace, _, _ = strings.Cut(namespace, ".")
	wantEndpoint := fmt.Sprintf("%s-headless.%s.svc.cluster.local:%d", release, namespace, monitorPort)
	bandsK8s, err := messages.NewBands(cfg.LLMQ.PriorityBands)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for b := range bandsK8s.Count() {
		for _, g := range cfg.Groups() {
			want[d.subj.Consumer(b, g)] = true
		}
	}
	exampleConsumers := map[string]bool{}
	for b := range d.bands {
		for _, g := range d.groups {
			exampleConsumers[d.subj.Consumer(b, g)] = true
		}
	}
	var names []string
	for _, tr := range asList(get(spec, "triggers")) {
		name, _ := get(tr, "name").(string)
		names = append(names, name)
		md := get(tr, "metadata")
		consumer := fmt.Sprint(get(md, "consumer"))
		if get(tr, "type") != "nats-jetstream" {
			t.Errorf("%s: trigger %s is not nats-jetstream", where, name)
		}
		if s := get(md, "stream"); s != d.subj.RequestStream() {
			t.Errorf("%s: trigger %s: stream %v, want %s", where, name, s, d.subj.RequestStream())
		}
		if a := get(md, "account"); a != account {
			t.Errorf("%s: trigger %s: account %v, want %s (k8s/nats-values.yaml)", where, name, a, account)
		}
		if e := get(md, "natsServerMonitoringEndpoint"); e != wantEndpoint {
			t.Errorf("%s: trigger %s: endpoint %v, want %s", where, name, e, wantEndpoint)
		}
		if _, err := strconv.Atoi(fmt.Sprint(get(md, "lagThreshold"))); err != nil {
			t.Errorf("%s: trigger %s: lagThreshold %v", where, name, get(md, "lagThreshold"))
		}
		if !want[consumer] {
			t.Errorf("%s: trigger %s: consumer %s is no band and model group of the config (%s_b<band>_<group>)", where, name, consumer, d.subj.Prefix())
		}
		if !exampleConsumers[consumer] {
			t.Errorf("%s: trigger %s: consumer %s is no band and group of deploy/config.example.yaml", where, name, consumer)
		}
		delete(want, consumer)
	}
	for c := range want {
		t.Errorf("%s: no trigger for consumer %s", where, c)
	}
	var terms []string
	for _, term := range strings.Split(fmt.Sprint(get(spec, "advanced", "scalingModifiers", "formula")), "+") {
		terms = append(terms, strings.TrimSpace(term))
	}
	if !slices.Equal(sorted(terms), sorted(names)) {
		t.Errorf("%s: scalingModifiers.formula must add up every trigger (%v), got %v", where, names, terms)
	}
}

// ---------------------------------------------------------------------------
// Grafana

// metricFamilies records one sample through every method of
// metrics.Metrics and returns the families registered, with their label names.
func metricFamilies(t *testing.T) map[string]map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	v := reflect.ValueOf(m)
	for i := range v.NumMethod() {
		meth := v.Method(i)
		var args []reflect.Value
		for j := range meth.Type().NumIn() {
			in := meth.Type().In(j)
			a := reflect.New(in).Elem()
			switch {
			case in == reflect.TypeFor[time.Duration]():
				a.SetInt(int64(time.Millisecond))
			case in.Kind() == reflect.String:
				a.SetString("x")
			case a.CanInt():
				a.SetInt(1)
			case a.CanUint():
				a.SetUint(1)
			case a.CanFloat():
				a.SetFloat(0.5)
			default:
				t.Fatalf("metrics.Metrics.%s takes a %s: teach deploycheck's metricFamilies", v.Type().Method(i).Name, in)
			}
			args = append(args, a)
		}
		meth.Call(args)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	for _, f := range fams {
		labels := map[string]bool{}
		for _, mm := range f.GetMetric() {
			for _, l := range mm.GetLabel() {
				labels[l.GetName()] = true
			}
		}
		out[f.GetName()] = labels
	}
	return out
}

func TestGrafanaDashboard(t *testing.T) {
	d := load(t)
	fams := metricFamilies(t)
	dash := d.dashboard
	if v, _ := dash["schemaVersion"].(float64); v < 36 {
		t.Errorf("dashboard: schemaVersion %v, want at least 36", dash["schemaVersion"])
	}
	dsVar := false
	for _, v := range asList(get(dash, "templating", "list")) {
		dsVar = dsVar || (get(v, "name") == "DS_PROMETHEUS" && get(v, "type") == "datasource" && get(v, "query") == "prometheus")
	}
	if !dsVar {
		t.Error("dashboard: want a templating variable DS_PROMETHEUS of type datasource (prometheus)")
	}
	metricRe := regexp.MustCompile(`\bllmq_[a-zA-Z0-9_]+`)
	byRe := regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	legendRe := regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
	used := map[string]bool{}
	ids := map[float64]bool{}
	var walk func(panels []any)
	walk = func(panels []any) {
		for _, p := range panels {
			title := fmt.Sprint(get(p, "title"))
			id, _ := get(p, "id").(float64)
			if ids[id] {
				t.Errorf("dashboard: panel id %v is used twice", id)
			}
			ids[id] = true
			walk(asList(get(p, "panels")))
			targets := asList(get(p, "targets"))
			if get(p, "type") != "row" && len(targets) == 0 {
				t.Errorf("dashboard: panel %q has no query", title)
			}
			if len(targets) > 0 && get(p, "datasource", "uid") != "${DS_PROMETHEUS}" {
				t.Errorf("dashboard: panel %q: datasource must be ${DS_PROMETHEUS}", title)
			}
			for _, tg := range targets {
				expr := fmt.Sprint(get(tg, "expr"))
				if u := get(tg, "datasource", "uid"); u != nil && u != "${DS_PROMETHEUS}" {
					t.Errorf("dashboard: panel %q: target datasource must be ${DS_PROMETHEUS}", title)
				}
				labels, unknown := map[string]bool{}, false
				names := metricRe.FindAllString(expr, -1)
				if len(names) == 0 {
					t.Errorf("dashboard: panel %q: query %q uses no llmq metric", title, expr)
				}
				for _, n := range names {
					fam := n
					if _, ok := fams[fam]; !ok {
						for _, suffix := range []string{"_bucket", "_sum", "_count"} {
							if base, ok := strings.CutSuffix(n, suffix); ok {
								if _, ok := fams[base]; ok {
									fam = base
									if suffix == "_bucket" {
										labels["le"] = true
									}
								}
							}
						}
					}
					ls, ok := fams[fam]
					if !ok {
						t.Errorf("dashboard: panel %q: %s is not a metric of internal/metrics", title, n)
						unknown = true
						continue
					}
					used[fam] = true
					for l := range ls {
						labels[l] = true
					}
				}
				var grouped []string
				for _, m := range byRe.FindAllStringSubmatch(expr, -1) {
					for _, l := range strings.Split(m[1], ",") {
						grouped = append(grouped, strings.TrimSpace(l))
					}
				}
				for _, m := range legendRe.FindAllStringSubmatch(fmt.Sprint(get(tg, "legendFormat")), -1) {
					grouped = append(grouped, m[1])
				}
				for _, l := range grouped {
					if l != "" && !labels[l] && !unknown {
						t.Errorf("dashboard: panel %q: label %q is not a label of the metrics in %q", title, l, expr)
					}
				}
			}
		}
	}
	walk(asList(dash["panels"]))
	for f := range fams {
		if !used[f] {
			t.Errorf("dashboard: no panel shows %s", f)
		}
	}
}

// ---------------------------------------------------------------------------
// Live: single.conf with the compose services' environment

type serverLog struct {
	mu         sync.Mutex
	violations []string
}

func (l *serverLog) Noticef(string, ...any) {}
func (l *serverLog) Warnf(string, ...any)   {}
func (l *serverLog) Fatalf(f string, a ...any) {
	l.Errorf(f, a...)
}
func (l *serverLog) Debugf(string, ...any) {}
func (l *serverLog) Tracef(string, ...any) {}
func (l *serverLog) Errorf(f string, a ...any) {
	if s := fmt.Sprintf(f, a...); strings.Contains(s, "Violation") {
		l.mu.Lock()
		l.violations = append(l.violations, s)
		l.mu.Unlock()
	}
}

func (l *serverLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.violations
	l.violations = nil
	return v
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestLive starts nats-server with deploy/nats/single.conf, then the gateway
// and a worker with the environment compose.yaml gives them (addresses moved
// to this machine), and checks that requests are served, that pkg/client
// works as user "service", that the worker user can use the dead-letter
// stream and the limiter's key-value bucket, that every llmqctl command works
// as user "admin" (compose.yaml's llmqctl service), and that the server
// reported no permission violation — and does report the ones it should.
func TestLive(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS, a gateway and a worker")
	}
	d := load(t)
	conf := d.natsServers["nats/single.conf"]
	opts, err := server.ProcessConfigFile(d.path(conf.rel))
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.StoreDir = t.TempDir()
	opts.NoSigs, opts.NoLog = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	slog := &serverLog{}
	srv.SetLogger(slog, false, false)
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, v := range slog.take() {
				t.Logf("nats-server: %s", v)
			}
		}
	})
	natsSvc, llmq := d.composeServices(t)

	// The compose environment, moved to this machine.
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("llmq logs:\n%s", logs.String())
		}
	})
	local := func(svc *composeService) (config.Env, string) {
		m := maps.Clone(svc.env)
		u, err := url.Parse(m["LLMQ_NATS_URL"])
		if err != nil || u.Hostname() != natsSvc.name {
			t.Fatalf("compose.yaml: %s: LLMQ_NATS_URL %q", svc.name, m["LLMQ_NATS_URL"])
		}
		m["LLMQ_NATS_URL"] = srv.ClientURL()
		if src, ok := d.docker.copies[m["LLMQ_CONFIG"]]; ok {
			m["LLMQ_CONFIG"] = filepath.Join(d.root, filepath.FromSlash(src))
		}
		m["LLMQ_LISTEN"] = "127.0.0.1:0"
		metricsAddr := ""
		if m["LLMQ_METRICS_LISTEN"] != "" {
			metricsAddr = freeAddr(t)
			m["LLMQ_METRICS_LISTEN"] = metricsAddr
		}
		m["LLMQ_DATA_DIR"] = t.TempDir()
		env, err := d.envFrom(m)
		if err != nil {
			t.Fatal(err)
		}
		return env, metricsAddr
	}
	lookup := func(name string) (string, bool) { v, ok := d.pwValue[name]; return v, ok }
	var gwSvc, wkSvc, ctlSvc *composeService
	for _, s := range llmq {
		switch s.role {
		case roleGateway:
			gwSvc = s
		case roleWorker:
			wkSvc = s
		case roleAdmin:
			ctlSvc = s
		}
	}
	if gwSvc == nil || wkSvc == nil || ctlSvc == nil {
		t.Fatal("compose.yaml: want a gateway, a worker and an llmqctl service")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gwEnv, _ := local(gwSvc)
	g, err := app.StartGateway(ctx, gwEnv, lookup, logs)
	if err != nil {
		t.Fatalf("gateway with the compose environment against single.conf: %v", err)
	}
	base := "http://" + g.Addr().String()
	httpc := &http.Client{Timeout: 10 * time.Second}
	status := func(u string) int {
		resp, err := httpc.Get(u)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s", what)
			}
		}
	}
	waitFor("gateway readiness", func() bool { return status(base+"/health/readiness") == http.StatusOK })
	var conns []*nats.Conn // every connection connect made
	connect := func(user string, opts ...nats.Option) *nats.Conn {
		t.Helper()
		u := conf.users[user]
		nc, err := nats.Connect(srv.ClientURL(), append([]nats.Option{nats.UserInfo(user, d.pwValue[u.PasswordVar])}, opts...)...)
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		conns = append(conns, nc)
		return nc
	}
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	defer rcancel()
	group := d.groups[0]

	// Before any worker runs, a queued request shows in GET /v1/queue.
	svcJS, err := jetstream.New(connect(roleService))
	if err != nil {
		t.Fatal(err)
	}
	queued := d.subj.Msg(&messages.Request{ID: "deploycheck-queued", Kind: messages.KindChat, Group: group, Band: 1,
		ReplyTo: nats.InboxPrefix + "deploycheck.gone", Deadline: time.Now().Add(5 * time.Second), Body: []byte(`{}`)}, time.Now())
	if _, err := svcJS.PublishMsg(rctx, queued); err != nil {
		t.Fatalf("publish a request as %s: %v", roleService, err)
	}
	if code := status(base + "/v1/queue"); code != http.StatusOK {
		t.Errorf("GET /v1/queue: %d", code)
	}
	if code := status(base + queuepage.Path); code != http.StatusOK {
		t.Errorf("GET %s (the queue page): %d", queuepage.Path, code)
	}

	wkEnv, metricsAddr := local(wkSvc)
	workerDone := make(chan error, 1)
	go func() { workerDone <- app.RunWorker(ctx, wkEnv, lookup, logs) }()
	stopLLMQ := sync.OnceFunc(func() {
		cancel()
		_ = g.Wait()
		select {
		case <-workerDone:
		case <-time.After(30 * time.Second):
			t.Error("the worker did not stop")
		}
	})
	t.Cleanup(stopLLMQ)
	// The worker's metrics listener starts once it is connected and has set
	// up JetStream: its probe path answering means the worker is up.
	waitFor("the worker's "+workerMetricsPath, func() bool {
		select {
		case err := <-workerDone:
			t.Fatalf("the worker stopped: %v", err)
		default:
		}
		return status("http://"+metricsAddr+workerMetricsPath) == http.StatusOK
	})

	for _, stream := range []bool{false, true} {
		body := fmt.Sprintf(`{"model":%q,"stream":%t,"messages":[{"role":"user","content":"hi"}]}`, group, stream)
		resp, err := httpc.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get(gateway.HeaderDeployment) == "" {
			t.Errorf("stream=%t: status %d, deployment %q: %s", stream, resp.StatusCode, resp.Header.Get(gateway.HeaderDeployment), b)
		}
	}

	// A batch (internal/batch, as the gateway user; its lines served by the
	// worker user): upload, create, poll to completed, read the output, list,
	// delete.
	batchRun(t, httpc, base, group)

	// An internal service submits with pkg/client.
	cl, err := client.New(connect(roleService), client.Options{Prefix: d.subj.Prefix(), BandBounds: d.example.LLMQ.PriorityBands})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cl.Do(rctx, &client.Request{Kind: messages.KindChat, Group: group, Priority: 0,
		Body: []byte(`{"model":"` + group + `","messages":[{"role":"user","content":"hi"}]}`), Deadline: time.Now().Add(15 * time.Second)}); err != nil {
		t.Errorf("pkg/client as user %s: %v", roleService, err)
	}
	_ = cl.Close()

	// The worker user: dead letters, and pkg/limiter's bucket, from two
	// processes at once (so that compare-and-set conflicts re-read keys).
	js, err := jetstream.New(connect(roleWorker))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(rctx, d.subj.DeadLetter(d.subj.Request(0, group)), []byte("{}")); err != nil {
		t.Errorf("dead-letter publish as %s: %v", roleWorker, err)
	}
	var sets []*limiter.Set
	for range 2 {
		js, err := jetstream.New(connect(roleWorker))
		if err != nil {
			t.Fatal(err)
		}
		set, err := limiter.Open(rctx, js, limiter.Options{Bucket: d.subj.LimitsBucket()})
		if err != nil {
			t.Fatalf("pkg/limiter as %s: %v", roleWorker, err)
		}
		sets = append(sets, set)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			l := sets[i%2].Deployment("deploycheck", limiter.Limits{RPM: 1000, TPM: 100000, MaxParallel: 8})
			r, err := l.Reserve(rctx, 10)
			if err != nil {
				t.Errorf("limiter reserve: %v", err)
				return
			}
			if err := r.KeepAlive(rctx); err != nil {
				t.Errorf("limiter keep-alive: %v", err)
			}
			if err := r.Settle(rctx, 5); err != nil {
				t.Errorf("limiter settle: %v", err)
			}
		})
	}
	wg.Wait()
	if err := sets[0].Deployment("deploycheck", limiter.Limits{RPM: 1000}).Cooldown(rctx, time.Second, "deploycheck"); err != nil {
		t.Errorf("limiter cooldown: %v", err)
	}

	// llmqctl as user admin, with the environment of compose.yaml's llmqctl
	// service: every command against the running gateway and worker, with
	// a dead letter the worker user writes as a worker does.
	deadReq := d.subj.Msg(&messages.Request{ID: "deploycheck-dead", Kind: messages.KindChat, Group: group, Band: 2,
		ReplyTo: nats.InboxPrefix + "deploycheck.dead", Deadline: time.Now().Add(time.Second),
		Body: []byte(`{"model":"` + group + `","messages":[{"role":"user","content":"hi"}]}`)}, time.Now())
	ack, err := js.PublishMsg(rctx, deadletter.Msg(d.subj, deadReq.Subject, deadReq.Header, deadReq.Data, "deploycheck: failed for good"))
	if err != nil {
		t.Fatalf("dead-letter publish as %s: %v", roleWorker, err)
	}
	deadID := strconv.FormatUint(ack.Sequence, 10)
	ctlEnv, _ := local(ctlSvc)
	cctx, ccancel := context.WithTimeout(context.Background(), 90*time.Second) // outlives the gateway and the worker
	defer ccancel()
	llmqctl := func(env config.Env, args ...string) (string, error) {
		var out bytes.Buffer
		err := ctl.Run(cctx, args, env, lookup, &out, logs)
		return out.String(), err
	}
	mustCtl := func(want string, args ...string) {
		t.Helper()
		out, err := llmqctl(ctlEnv, args...)
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("llmqctl %s as %s: %v, want %q in:\n%s", strings.Join(args, " "), ctlEnv.NATSUser, err, want, out)
		}
	}
	out, err := llmqctl(ctlEnv, "status")
	if err != nil || !strings.Contains(out, "Queue "+d.subj.RequestStream()) || strings.Contains(out, "cannot be read") {
		t.Errorf("llmqctl status as %s: %v\n%s", ctlEnv.NATSUser, err, out)
	}
	mustCtl("deploycheck-dead", "dead", "list")
	mustCtl("Replayable: yes", "dead", "show", "--body", deadID)
	mustCtl("paused", "pause", group, "--band", "2")
	mustCtl(fmt.Sprintf("Paused: %q band 2", group), "status")
	mustCtl("resumed", "resume", group)
	mustCtl("dead letter "+deadID+" removed", "dead", "replay", deadID)
	mustCtl("removed", "dead", "purge", "--all")
	mustCtl("Dead letters in "+d.subj.DeadLetterStream()+": 0", "dead", "list")
	// The gateway and the worker each answer.
	mustCtl("2 processes answered within 3s, 0 refused", "reload", "--wait", "3s")

	// Everything above has reached the server once every connection that
	// did it is closed: a client flushes what it sent before it closes, and
	// the server reads all of it (logging any violation) before it drops the
	// connection.
	for _, set := range sets {
		_ = set.Close()
	}
	stopLLMQ()
	for _, nc := range conns {
		nc.Close()
	}
	waitFor("every connection to close", func() bool { return srv.NumClients() == 0 })
	for _, v := range slog.take() {
		t.Errorf("nats-server: %s", v)
	}

	// And what each user must not do is refused.
	refused := func(user, what string, do func(nc *nats.Conn) error) {
		t.Helper()
		errs := make(chan error, 4)
		nc := connect(user, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		if err := do(nc); err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		select {
		case err := <-errs:
			if !errors.Is(err, nats.ErrPermissionViolation) {
				t.Errorf("%s %s: %v", user, what, err)
			}
		case <-time.After(20 * time.Second): // the refusal comes as soon as the server read it
			t.Errorf("user %s may %s", user, what)
		}
	}
	api := jetstream.DefaultAPIPrefix
	refused(roleWorker, "publish requests", func(nc *nats.Conn) error { return nc.Publish(d.subj.Request(0, group), nil) })
	refused(roleService, "delete the request stream", func(nc *nats.Conn) error {
		return nc.Publish(api+"STREAM.DELETE."+d.subj.RequestStream(), nil)
	})
	refused(roleGateway, "subscribe to the wake-up hints", func(nc *nats.Conn) error {
		_, err := nc.SubscribeSync(d.subj.WakeWildcard())
		return err
	})
	refused(roleAdmin, "delete the request stream", func(nc *nats.Conn) error {
		return nc.Publish(api+"STREAM.DELETE."+d.subj.RequestStream(), nil)
	})
	refused(roleAdmin, "purge the request stream", func(nc *nats.Conn) error {
		return nc.Publish(api+"STREAM.PURGE."+d.subj.RequestStream(), nil)
	})
	refused(roleAdmin, "delete the dead-letter stream", func(nc *nats.Conn) error {
		return nc.Publish(api+"STREAM.DELETE."+d.subj.DeadLetterStream(), nil)
	})
	// llmqctl with another user's credentials fails, naming the refusal.
	svcEnv := ctlEnv
	svcEnv.NATSUser, svcEnv.NATSPassword = roleService, d.pwValue[conf.users[roleService].PasswordVar]
	if out, err := llmqctl(svcEnv, "dead", "purge", "--all"); !errors.Is(err, nats.ErrPermissionViolation) {
		t.Errorf("llmqctl dead purge as %s: %v, want a permissions violation\n%s", roleService, err, out)
	}
	if len(slog.take()) < 7 {
		t.Error("nats-server logged fewer violations than the refused operations")
	}
}

// batchRun runs a two-line batch through the gateway at base: upload,
// create, poll until completed, read the output, list the files, delete
// the output.
func batchRun(t *testing.T, httpc *http.Client, base, group string) {
	t.Helper()
	do := func(method, path, contentType string, body io.Reader, out any) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, body)
		if err != nil {
			t.Fatal(err)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := httpc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s %s: %v: %s", method, path, err, b)
			}
		}
	}
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	_ = mw.WriteField("purpose", "batch")
	fw, _ := mw.CreateFormFile("file", "deploycheck.jsonl")
	for i := range 2 {
		fmt.Fprintf(fw, `{"custom_id":"dc-%d","method":"POST","url":"/v1/chat/completions","body":{"model":%q,"messages":[{"role":"user","content":"hi"}]}}`+"\n", i, group)
	}
	_ = mw.Close()
	var file struct{ ID string }
	do(http.MethodPost, "/v1/files", mw.FormDataContentType(), &form, &file)
	var b struct {
		ID, Status   string
		OutputFileID string `json:"output_file_id"`
	}
	do(http.MethodPost, "/v1/batches", "application/json", strings.NewReader(`{"input_file_id":"`+file.ID+`","endpoint":"/v1/chat/completions","completion_window":"24h"}`), &b)
	for deadline := time.Now().Add(20 * time.Second); b.Status != "completed"; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("batch %s is %s, want completed", b.ID, b.Status)
		}
		do(http.MethodGet, "/v1/batches/"+b.ID, "", nil, &b)
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/files/"+b.OutputFileID+"/content", nil)
	resp, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := bytes.Count(out, []byte(`"status_code":200`)); n != 2 {
		t.Errorf("batch output has %d served lines, want 2: %s", n, out)
	}
	do(http.MethodGet, "/v1/files", "", nil, nil)
	do(http.MethodGet, "/v1/batches", "", nil, nil)
	do(http.MethodDelete, "/v1/files/"+b.OutputFileID, "", nil, nil)
}
