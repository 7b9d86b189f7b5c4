// Package messages is llmq's wire contract: the NATS subjects, header names,
// request and reply envelopes, outcome codes and the priority-band table.
// Everything that crosses NATS is defined here once, so that the gateway, the
// workers and internal services (through pkg/client or by hand) agree on it.
//
// # Submitting a request
//
// A request is a JetStream publish to the subject
//
//	<prefix>.req.<band>.<group>
//
// where <prefix> is llmq_settings.subject_prefix ("llmq" by default), <band>
// is the decimal band number (0 is the most important) computed from the
// priority with [Bands.Band], and <group> is the model group (the public
// model_name) encoded with [EncodeToken]. A request of a named tenant (not
// "anonymous") goes to its tenant lane, one more token:
//
//	<prefix>.req.<band>.<group>.t<lane>
//
// with <lane> = [Lane](tenant), 0 to [TenantLanes]-1 ([Subjects.RequestLane];
// [Subjects.Msg] chooses it). Workers serve each lane from a consumer of its
// own, so they can share a band between tenants before they fetch. The body is the OpenAI request body
// (chat completions or text completions) as JSON, without llmq-only fields
// such as "priority". The headers are:
//
//	Llmq-Version     "1" (Version)
//	Llmq-Request-Id  unique id of the request; also sent as Nats-Msg-Id
//	Llmq-Kind        "chat" or "completion"
//	Llmq-Priority    effective priority, a decimal int64
//	Llmq-Reply       the subject the answer goes to (the caller's inbox)
//	Llmq-Deadline    queue deadline, Unix milliseconds; work that has not
//	                 started by then is dropped without calling a provider
//	Llmq-Answer-Deadline  optional, Unix milliseconds: when the caller stops
//	                 waiting for the answer; a worker holds a pickup or an
//	                 answer that finds nobody on the caller's inbox (its
//	                 gateway is reconnecting to NATS) until then
//	Llmq-Tenant      optional: the tenant the request is for (ValidTenant:
//	                 1 to 128 bytes of printable ASCII); absent means
//	                 "anonymous" (TenantAnonymous). Dispatch shares a band's
//	                 capacity between tenants. The gateway sets it from the
//	                 caller's key; a service that publishes directly sets it
//	                 itself
//	Llmq-Caller-Acks optional, "1": the caller acks the request itself
//	                 when its served answer arrives (see Answers)
//	Llmq-Notify-Until  optional, Unix milliseconds: until then a worker may
//	                 start the request on its first delivery without a
//	                 pickup check (see Answers)
//	Nats-Msg-Id      the request id (JetStream deduplication)
//	Nats-TTL         the time to the deadline (expired requests leave the stream)
//
// # Answers
//
// A worker that picks a request up first sends a pickup message (header
// Llmq-Event "pickup") as a NATS request to the Llmq-Reply subject and waits
// for the caller's reply: [PickupAccept] means "still waiting, go on";
// anything else, a timeout or "no responders" means the caller is gone, and the
// worker drops the request without calling a provider. The caller must answer
// pickups on its inbox; pkg/client does this.
//
// Unless the request says otherwise: a request with Llmq-Notify-Until may
// be started without that round trip on its first delivery before then
// (no later than [NotifyWindow] after it was stored, not within
// NotifyWindow of its queue deadline, and only by a worker that has heard
// from the caller's inbox before). The worker then sends Llmq-Event
// "started" as the call starts, with Llmq-Control, Llmq-Deployment and
// Llmq-Redeliver-In as a pickup has, and a reply subject of its own:
// "no responders" there stops the call, and the request is held as a
// pickup that found nobody is. A caller that receives
// "started" for a request it no longer waits for sends "cancel" to
// Llmq-Control. A caller that gives up such a request before its
// Llmq-Notify-Until publishes its Llmq-Reply subject to <prefix>.left
// ([Subjects.Left]): workers then ask before they start it, and stop a
// call of it they started. pkg/client sets Llmq-Notify-Until to a second
// after the publish (or its ParkAfter, if sooner: a parked caller is
// checked at its pickup).
//
// While it works, the worker sends Llmq-Event "alive" to the inbox every
// HeartbeatInterval, with its control subject as the message's reply
// subject: if the caller is gone, NATS answers "no responders" there and the
// worker cancels the provider call. A caller that gives up sends Llmq-Event
// "cancel" to that control subject (also named in the pickup's Llmq-Control
// header). The pickup and every "alive" carry Llmq-Redeliver-In: the
// milliseconds, from the event's sending, after which JetStream redelivers
// the request if the worker acknowledges nothing more (it died). A
// redelivery is not republished as a wake-up hint, so the caller, the one
// party that can tell when it comes, publishes an empty message to
// <prefix>.wake.<band>.<group> at that time, once the worker has also been
// silent for two heartbeats (pkg/client does this); idle
// workers then fetch the request at once rather than at their next
// safety-net poll.
//
// A worker that hands a request back unanswered (it is shutting down) sends
// Llmq-Event "requeue" first. A caller accepts a second pickup of a plain
// request only after "requeue" or when its worker has been silent for two
// heartbeats (it died), so a request is never at two providers at once; a
// stream is never picked up twice.
//
// A pickup or an answer that finds nobody on the caller's inbox is held
// (tried again, the request handed back for later) until the caller's
// Llmq-Answer-Deadline, or, for a pickup, its queue deadline if earlier: a
// caller's connection may be reconnecting. A worker holds them so only for a
// caller it has heard from (a pickup answered, an answer confirmed) in the
// last hour, and for others about five seconds, so that the requests of a
// gateway that stopped before the worker started leave the queue. A caller
// that closes for good publishes its inbox prefix (Llmq-Reply up to its last
// '.') to <prefix>.gone; workers then drop its requests' pickups and answers
// that find nobody, at once.
//
// Headers added within version "1" are optional: a reader that does not know
// them ignores them, and a message without them means what it meant before
// (Llmq-Answer-Deadline: workers hold answers for a default bound;
// Llmq-Redeliver-In: no wake-up hint, the safety-net poll finds the
// redelivery).
//
// A streamed request (Llmq-Stream "1") is answered by "chunk" events, each
// carrying one server-sent-event payload of the provider (the JSON after
// "data: ") and numbered by Llmq-Seq from 1; the first carries the
// deployment that produced it in Llmq-Deployment (after a fallback, not the
// one named at pickup); the final "reply" carries the next number, so a gap
// or reordering is detected. A stream that broke after its first chunk ends
// with a reply of its fault's outcome, never as served.
//
// The final answer is a NATS request to Llmq-Reply with Llmq-Event "reply",
// the HTTP status in Llmq-Status, the [Outcome] in Llmq-Outcome, the
// deployment that served it in Llmq-Deployment, and the provider's response
// body (or an OpenAI-shaped error body) as payload. The caller confirms it
// with an empty reply; a worker whose answer goes unconfirmed (the caller's
// gateway was briefly cut off from NATS) hands the request back to be served
// again, and the caller keeps the first answer it gets.
//
// A served answer to a request with Llmq-Caller-Acks is not confirmed:
// it carries Llmq-Ack, the request's JetStream ack subject ($JS.ACK...),
// and the caller publishes [AckToken] there, which removes the request from
// the stream (one message instead of a confirmation, the worker's ack and
// its answer). The worker sends it with a reply subject of its own, so that
// NATS answers "no responders" when nobody is on the inbox, and holds it
// as above; otherwise it counts it as delivered. An answer lost on the way
// leaves the request unacked: it is redelivered after the ack wait and
// served again for the caller that still waits.
//
// # Wildcard groups
//
// A model group whose name holds '*' ("*", "openai/*") serves every model a
// caller names that no group names exactly and its pattern matches; [Groups]
// finds the group for a model. Such a request is published on the subject of
// the wildcard group (llmq.req.<band>.openai=2F=2A), so it shares that
// group's queue, deployments and limits, with the requested model left in
// the body's "model"; the worker calls the deployment with the requested
// model fitted into the deployment's model ([FillWildcard]).
//
// # Group tokens
//
// A model group name may contain characters that are not allowed in a NATS
// subject token or a consumer name ('.', '*', '>', spaces, '/'). [EncodeToken]
// keeps ASCII letters, digits, '-' and '_' and writes every other byte as '='
// followed by two upper-case hex digits, so "gpt-4o" stays "gpt-4o" and
// "openai/gpt-4.1" becomes "openai=2Fgpt-4=2E1". The encoding is reversible
// with [DecodeToken].
//
// # Versions
//
// Llmq-Version is "1". Additions that every reader of version 1 can ignore
// keep the version and are listed here; a change an older reader would get
// wrong raises it (and a reader refuses a version it does not know, so it
// never serves what it would misread).
//
//	1    the headers above without Llmq-Tenant
//	1+t  Llmq-Tenant, tenant lanes (<prefix>.req.<band>.<group>.t<lane>)
//	     and served-tokens hints (<prefix>.served.>, see
//	     [Subjects.Served]); requests without a tenant are the anonymous
//	     tenant's, on the subject they always had. A worker older than
//	     lanes does not serve a lane's requests: upgrade the workers first,
//	     then the gateways and services that send tenants
//	1+a  Llmq-Caller-Acks and Llmq-Ack; Llmq-Notify-Until, the "started"
//	     event and <prefix>.left. A worker that does not
//	     know them confirms and picks up as before, so a caller that sends
//	     them must still answer pickups and confirmations (pkg/client
//	     does); a caller that does not send them is served as before. Served-tokens
//	     hints are summed per tenant over 20 ms (Llmq-Estimate is gone)
package messages
