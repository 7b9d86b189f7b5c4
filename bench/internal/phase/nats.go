package phase

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/llmq/llmq/bench/internal/system"
)

// r3Replicas is llmq_settings.replicas with the 3-node cluster.
const r3Replicas = 3

// phaseName is the name of phase name's R3 variant when r3 is set, for
// progress lines and directories.
func phaseName(name string, r3 bool) string {
	if r3 {
		return name + "-r3"
	}
	return name
}

// natsFor writes cfg for phase name and returns the options of llmq
// processes using it. Without r3 they embed the NATS server (close does
// nothing). With r3, cfg gets replicas 3, and the options point at a fresh
// 3-node NATS cluster on 127.0.0.1 (one process per node, stores next to the
// config), whose processes are returned and which close stops.
func (e Env) natsFor(ctx context.Context, name string, r3 bool, cfg system.Config) (po system.ProcessOptions, procs []system.Proc, close func() error, err error) {
	name = phaseName(name, r3)
	if !r3 {
		po, err = e.processOptions(name, cfg)
		return po, nil, func() error { return nil }, err
	}
	cfg.Replicas = r3Replicas
	if po, err = e.processOptions(name, cfg); err != nil {
		return po, nil, nil, err
	}
	e.logf("%s: starting a 3-node NATS cluster on 127.0.0.1", name)
	cl, err := system.StartCluster(ctx, e.NodeCmd, filepath.Join(filepath.Dir(po.Config), "nats"), e.LogOut)
	if err != nil {
		return po, nil, nil, fmt.Errorf("start the 3-node NATS cluster: %w", err)
	}
	po.NATSURL, po.NATSMonitors = cl.URL, cl.Monitors
	return po, cl.Procs(), cl.Close, nil
}
