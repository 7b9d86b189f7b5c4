package config

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// Seconds is a duration written in YAML as a number of seconds (int or float, e.g. 600
// or 0.5). A Go duration string like "30s" is accepted too.
type Seconds time.Duration

// D returns s as a time.Duration.
func (s Seconds) D() time.Duration { return time.Duration(s) }

// String formats s like time.Duration.
func (s Seconds) String() string { return time.Duration(s).String() }

// MarshalYAML writes s as a number of seconds.
func (s Seconds) MarshalYAML() (any, error) { return time.Duration(s).Seconds(), nil }

// UnmarshalYAML reads a number of seconds or a Go duration string. A bad value is
// reported as a *yaml.TypeError, so decoding goes on with the other fields.
func (s *Seconds) UnmarshalYAML(n *yaml.Node) error {
	fail := func(why string) error {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf(
			"line %d: cannot unmarshal %s `%s` into config.Seconds: %s", n.Line, n.ShortTag(), n.Value, why)}}
	}
	if n.Kind != yaml.ScalarNode {
		return fail("want a number of seconds or a duration string")
	}
	var secs float64
	switch n.ShortTag() {
	case "!!int", "!!float":
		if err := n.Decode(&secs); err != nil {
			return fail("not a number")
		}
	case "!!str":
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil {
			d, err := time.ParseDuration(n.Value)
			if err != nil {
				return fail(`want a number of seconds or a duration string like "30s"`)
			}
			*s = Seconds(d)
			return nil
		}
		secs = f
	default:
		return fail("want a number of seconds or a duration string")
	}
	ns := secs * float64(time.Second)
	if math.IsNaN(ns) || ns >= math.MaxInt64 || ns <= math.MinInt64 {
		return fail("out of range")
	}
	*s = Seconds(math.Round(ns))
	return nil
}
