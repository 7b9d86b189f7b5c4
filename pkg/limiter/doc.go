// Package limiter enforces the per-deployment limits of llmq — requests per
// minute (rpm), tokens per minute (tpm) and max_parallel_requests — globally,
// across every worker process on every machine, with NATS JetStream KV as the
// only shared infrastructure.
//
// # Algorithm
//
// Each rate limit ("L units per period T", T one minute by default) is a GCRA
// (see the GCRA type, whose methods take the time explicitly, in the manner of
// golang.org/x/time/rate) made of two parts:
//
//   - Pacing. A theoretical arrival time TAT; a reservation of n units at time
//     t needs TAT <= t and sets TAT = max(TAT, t - τ) + c(n), with
//     c(n) = ceil(n*T/L) and a tolerance τ = T/60. This spreads admissions
//     evenly at L per T; up to τ of idle time or waiter lateness is banked.
//   - Window log. The units admitted in the last period and a margin M,
//     summed into buckets of width w = T/120 on a fixed time grid. A bucket
//     counts at time x while its end is after x - T - M; U(x) is the sum of
//     the counting buckets. A reservation of n units at t also needs
//     U(t) + n <= L.
//
// A reservation of n > L is refused for good (ErrTooLarge).
//
// The margin (Options.Margin, 250 ms by default) is for the provider, which
// counts arrivals, not admissions: a call arrives a variable moment after its
// admission. Below, T stands for T + M: no window of T + M holds more than L
// admissions, so no window of T at the provider holds more than L arrivals as
// long as the delay from admission to arrival varies by less than M. A caller
// keeps it so with Reservation.Restamp just before the call: an admission
// older than M/2 is given back and taken anew at that moment.
//
// Guarantee: no half-open window [s, s+T) ever holds more than L admitted
// units. Proof: let k be the last admission of the window in the order the
// state was updated (compare-and-set makes the admissions of all processes one
// sequence), at t_k < s+T. Every other admission i of the window was recorded
// before k, at t_i >= s > t_k - T, in a bucket that ends after t_i and so
// still counts at t_k: U(t_k) is at least their sum. k was admitted only if
// U(t_k) + n_k <= L. ∎ The proof uses neither the pacing nor any order of the
// times, so it holds whatever the clocks of the processes, as long as they are
// less than w apart (a bucket is pruned one width after it stops counting).
//
// Why not the classic GCRA alone: with τ = 0 and a cost n (admit iff
// TAT <= t, then TAT = t + n*T/L) the admissions before the last one of a
// window sum to less than L, but the last one adds its n unchecked, so a window
// can hold L - 1 + n. For unit costs it is exact, but every millisecond a
// waiter wakes up late is lost for good: in the tests that gave 0.5 to 0.7 of
// the limit at 20 ms per request. The log makes the guarantee independent of
// the pacing, so the pacing can bank lateness.
//
// Long-run rate under saturation (a waiter always retries at the time the
// refusal names, late by at most τ), with costs of at most m units: the pacing
// alone admits L per T, since TAT advances by exactly c(n) per admission and
// lateness up to τ is banked. A unit admitted at a stops counting by a + T + w;
// when the log refuses n <= m at x, U(x) > L - m, and those units were admitted
// in (x - T - w, x]. So while the log binds, every T + w admits more than L - m
// units, and the long-run rate is at least (L - m + 1)/L × T/(T + w) of the
// limit: 0.9917 for unit costs (rpm), 0.98 for costs up to 1% of the limit.
// TestGCRASaturation checks this by simulation. (No limiter can do better than
// m⌊L/m⌋ per T for a constant cost m without overflowing some window.)
//
// Settle and cancel. After the call, Settle replaces the token estimate by
// the usage the provider reported. The log gets the difference in the bucket
// of the admission (so it holds the settled units; the guarantee above holds
// for settled usage as long as usage <= estimate). The pacing moves back only
// if nothing was admitted since — later admissions were already spaced by the
// estimate — and moves forward by c(excess) for usage above the estimate
// (those tokens are spent; the following window pays for them). Cancel is a
// settle with zero for both the request and its tokens.
//
// # Shared state
//
// Open creates (or updates) the bucket: history 1, file storage, the given
// replicas, and LimitMarkerTTL so that keys can carry a per-key TTL and
// watchers learn when a key expires. Each deployment id is hex-encoded into
// its keys:
//
//   - d_<hex>.rate: the rpm and tpm GCRA state in one value (a few hundred
//     bytes), updated by compare-and-set on the last revision, so that one
//     write reserves the request and its tokens together, or neither. It
//     carries a TTL of two periods: by then an untouched state is equivalent to
//     an empty one.
//   - d_<hex>.slot.<i>, 0 <= i < MaxParallel: a concurrency slot, created only
//     if absent (compare-and-set on the revision seen), with a TTL of SlotTTL
//     refreshed by KeepAlive, deleted on release. At most MaxParallel such
//     keys exist at once, so at most MaxParallel calls hold one; a crashed
//     holder's slot expires by itself.
//   - d_<hex>.cool: a cooldown (until, reason) with a TTL; the value decides,
//     the TTL only cleans up.
//
// Writes go through PublishMsg with an expected last subject sequence and a
// Nats-TTL header: that is kv.Update plus a per-key TTL, which kv.Update
// cannot set. A lost race re-reads the key (deleted keys included) and retries
// a bounded number of times; a refusal that the fresh state gives is final for
// this call, so with capacity K and any number of waiters across processes at
// most K reservations succeed.
//
// Each write also carries a Nats-Msg-Id of its own. A write that meets the
// bucket's stream without a leader (a cluster node failed: no responders,
// or no answer from a leader that died) is sent again, unchanged, until the
// new leader answers or WriteBound has passed. A repeat of a write that the
// stream had stored, but whose acknowledgement was lost, is acknowledged as
// a duplicate with the first write's revision (a single server refuses it
// as a lost race instead, and the key's last message, carrying the write's
// id, shows it was the write's own), so nothing is counted twice or lost.
// Past WriteBound the call fails with ErrUnavailable.
//
// Every process keeps a mirror of the bucket from a KV watcher. Headroom,
// Usage and CoolingDown read it without a round trip, Reserve refuses from it
// when it already can, and compare-and-set starts from the mirrored revision.
// Changed signals mirror changes that may free capacity, including the end of
// a cooldown (a timer).
//
// NATS round trips in the common case (all three limits set, no lost race):
// Reserve 2 (create slot, write rate state); Settle 2 (delete slot, write rate
// state) or 1 when the usage equals the estimate; Cancel 2; KeepAlive 1. With
// rate limits only: Reserve 1, Settle 0 or 1. A refusal the mirror can tell:
// 0. A deployment without limits: 0. A lost race costs 2 more (re-read,
// retry).
//
// # Contract
//
// The caller owns a Reservation and ends it exactly once, with Settle if the
// call was made or Cancel if not (later calls are no-ops), and runs KeepAlive
// every SlotTTL/3 during long calls. Settle with a context that does not end
// with the client's request. Set, Limiter and Reservation are safe for
// concurrent use. The caller owns the NATS connection; Close stops the watcher
// and timers, but does not end open reservations (their slots expire as a
// crashed process's would) — settle them first, and close the connection after
// the Set. All processes must use the same Period and limits for a deployment
// and keep their clocks within Period/120 (NTP). The package never logs.
//
// Caveats: the mirror lags writes by about a round trip, so a process may
// refuse from stale state for that long (Changed follows); Changed wakes one
// waiter per process (it holds one signal), so a process with many waiters
// should fan it out; the provider may count the reserved estimate (prompt plus
// max_tokens) rather than the usage in its own window, in which case settle
// with -1 to keep the estimate; JetStream TTLs have one-second granularity,
// so SlotTTL is rounded up to whole seconds.
package limiter
