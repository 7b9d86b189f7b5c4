// Package config loads llmq's configuration: the YAML model and routing file, and the
// process settings read from LLMQ_* environment variables.
//
// # The YAML file
//
// The file has the shape of LiteLLM's proxy config.yaml, so a LiteLLM user can bring
// theirs over unchanged, plus one extra top-level block, llmq_settings:
//
//	model_list:                  # one entry per deployment
//	  - model_name: gpt-4o       # the model group callers name
//	    litellm_params:          # how to reach the deployment
//	      model: openai/gpt-4o
//	      api_base: https://api.openai.com/v1
//	      api_key: os.environ/OPENAI_API_KEY
//	      rpm: 500
//	    model_info:
//	      id: gpt-4o-primary     # default "<model_name>-<index within the group>"
//	router_settings:             # routing strategy, queue deadline, retries, fallbacks
//	  routing_strategy: simple-shuffle
//	  timeout: 600               # seconds
//	litellm_settings:            # retries, provider timeout, fallbacks
//	  request_timeout: 600
//	general_settings:
//	  master_key: os.environ/LLMQ_MASTER_KEY
//	llmq_settings:               # llmq's own block: bands, backlog caps, NATS naming
//	  priority_bands: [0, 1, 2, 3, 4, 5, 6, 7, 8]
//	  subject_prefix: llmq
//
// Durations are written as a number of seconds (600, 0.5) or as a Go duration string
// ("30s"); see [Seconds].
//
// Keys that LiteLLM knows but llmq ignores (anywhere in the LiteLLM blocks, and the other
// LiteLLM top-level keys such as environment_variables or guardrails) are listed in
// [Config.Warnings]. An unknown key inside llmq_settings, or an unknown top-level key, is
// an error.
//
// # Deployments
//
// Parse resolves each deployment against the provider table
// (internal/vendor) into [LiteLLMParams.Endpoint]: the vendor named by the
// model's prefix, its api_base (the file's, else the variables LiteLLM reads,
// else the vendor's default) and how its key is sent. An api_key the file
// does not set is read from the vendor's LiteLLM variables (GROQ_API_KEY, …)
// through the same lookup; [LiteLLMParams.KeySource] says where it came from.
// An unknown prefix without api_base is an error naming the entry, the prefix
// and the supported list. rpm and tpm may be written beside litellm_params
// (Deployment.RPM, TPM) with the same meaning. The litellm_params LiteLLM
// sends with every call ([CallParams]) become [LiteLLMParams.Defaults] and
// [LiteLLMParams.Headers]. A model_name with '*' is a wildcard group.
// [Check] is Load for "gateway -check": it also returns the config when it
// has errors.
//
// The walker in walk.go, not yaml.v3's KnownFields, finds unknown keys:
// LiteLLM's keys must be warnings with a path while llmq_settings' are
// errors, and os.environ/ values are resolved in the node tree before it is
// decoded, but KnownFields exists only on yaml.Decoder (bytes), not on
// Node.Decode, and reports "line N: field x not found in type T" without a
// path.
//
// # The os.environ/ rule
//
// Any scalar value of a field llmq reads that is written as "os.environ/NAME" is replaced
// by the value of the variable NAME, looked up with the function given to [Load] or
// [Parse] (usually [os.LookupEnv]); the replacement is then read as if it had been written
// in the file unquoted, so "rpm: os.environ/RPM" with RPM=100 is the number 100. A
// variable that is not set is an error naming the field and the variable. Values under
// ignored keys are not resolved. Nothing in this package reads the environment itself.
//
// # Errors
//
// [Load] and [Parse] report every problem at once: the error is an [errors.Join] of one
// error per problem, each a [*FieldError] whose message starts with the field's path,
// e.g. "model_list[1].litellm_params.rpm: must not be negative". The few problems that
// have no path (YAML syntax errors, duplicate keys found only by the decoder) start with
// "line N:" instead.
//
// # Process settings
//
// [Env] holds the settings of the binaries, read by their main with
// envconfig.Process("LLMQ", &env); [Env.Validate] checks them.
package config
