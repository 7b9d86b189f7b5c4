// Package deploycheck holds only tests: they parse every file under deploy/
// (NATS server configs, Dockerfile, compose file, Kubernetes manifests, Helm
// values, KEDA ScaledObject, Grafana dashboard) and check them against the
// code's own names — environment variables of config.Env, subjects, streams
// and consumers of pkg/messages, the gateway's routes, the metric names of
// internal/metrics — and run the gateway, a worker, pkg/client and every
// llmqctl command against deploy/nats/single.conf to prove its permissions
// are sufficient. A file
// under deploy/ that no check knows makes the tests fail, so a new deploy
// file comes with its check.
package deploycheck
