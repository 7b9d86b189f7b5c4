package limiter

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Keys of the bucket. A deployment id is hex-encoded into one token, so any
// id gives valid keys:
//
//	d_<hex id>.rate      rpm and tpm GCRA state, one value (one CAS reserves both)
//	d_<hex id>.cool      cooldown: until (Unix ns) and reason
//	d_<hex id>.slot.<i>  concurrency slot i, 0 <= i < MaxParallel
const (
	keyPrefix = "d_"
	kindRate  = "rate"
	kindCool  = "cool"
	kindSlot  = "slot"
)

func depToken(id string) string { return keyPrefix + hex.EncodeToString([]byte(id)) }

func rateKey(tok string) string { return tok + "." + kindRate }
func coolKey(tok string) string { return tok + "." + kindCool }
func slotKey(tok string, i int) string {
	return tok + "." + kindSlot + "." + strconv.Itoa(i)
}

// parseKey splits a bucket key into deployment token, kind and slot index.
func parseKey(key string) (tok, kind string, slot int, ok bool) {
	parts := strings.Split(key, ".")
	if len(parts) < 2 || !strings.HasPrefix(parts[0], keyPrefix) {
		return "", "", 0, false
	}
	tok, kind = parts[0], parts[1]
	switch {
	case kind == kindRate && len(parts) == 2, kind == kindCool && len(parts) == 2:
		return tok, kind, 0, true
	case kind == kindSlot && len(parts) == 3:
		i, err := strconv.Atoi(parts[2])
		if err != nil || i < 0 {
			return "", "", 0, false
		}
		return tok, kind, i, true
	}
	return "", "", 0, false
}

// rateState is the value of a rate key: the GCRA state of rpm and of tpm.
type rateState struct {
	rpm, tpm gcraState
}

func (s rateState) clone() rateState { return rateState{rpm: s.rpm.clone(), tpm: s.tpm.clone()} }

func (s rateState) equal(o rateState) bool { return s.rpm.equal(o.rpm) && s.tpm.equal(o.tpm) }

// stateVersion is the first byte of an encoded rate state.
const stateVersion = 1

var errBadState = errors.New("malformed limiter state")

// encodeRate writes a rate state compactly: a version byte, then for rpm and
// tpm: tat (varint), seq, width, bucket count (uvarints), and per bucket the
// index (varint, first absolute, then the gap to the previous) and units
// (uvarint).
func encodeRate(s rateState) []byte {
	b := make([]byte, 0, 32+8*(len(s.rpm.log)+len(s.tpm.log)))
	b = append(b, stateVersion)
	for _, g := range []gcraState{s.rpm, s.tpm} {
		b = binary.AppendVarint(b, g.tat)
		b = binary.AppendUvarint(b, g.seq)
		b = binary.AppendVarint(b, g.width)
		b = binary.AppendUvarint(b, uint64(len(g.log)))
		var prev int64
		for i, bk := range g.log {
			if i == 0 {
				b = binary.AppendVarint(b, bk.idx)
			} else {
				b = binary.AppendVarint(b, bk.idx-prev)
			}
			prev = bk.idx
			b = binary.AppendUvarint(b, uint64(bk.units))
		}
	}
	return b
}

func decodeRate(b []byte) (rateState, error) {
	var s rateState
	if len(b) == 0 {
		return s, nil
	}
	if b[0] != stateVersion {
		return s, errBadState
	}
	b = b[1:]
	bad := false
	varint := func() int64 {
		v, n := binary.Varint(b)
		if n <= 0 {
			bad = true
			return 0
		}
		b = b[n:]
		return v
	}
	uvarint := func() uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			bad = true
			return 0
		}
		b = b[n:]
		return v
	}
	for _, g := range []*gcraState{&s.rpm, &s.tpm} {
		g.tat = varint()
		g.seq = uvarint()
		g.width = varint()
		n := uvarint()
		if bad || n > uint64(len(b)) || g.width < 0 {
			return rateState{}, errBadState
		}
		if n > 0 {
			g.log = make([]bucket, 0, n)
		}
		var prev int64
		for i := range n {
			d := varint()
			u := uvarint()
			if i == 0 {
				prev = d
			} else {
				prev += d
			}
			if bad || (i > 0 && d <= 0) || u > 1<<62 {
				return rateState{}, errBadState
			}
			g.log = append(g.log, bucket{idx: prev, units: int64(u)})
		}
	}
	if len(b) != 0 {
		return rateState{}, errBadState
	}
	return s, nil
}

// cooldown is the value of a cool key.
type cooldown struct {
	until  int64 // Unix ns
	reason string
}

func encodeCool(c cooldown) []byte {
	b := binary.AppendVarint(nil, c.until)
	return append(b, c.reason...)
}

func decodeCool(b []byte) (cooldown, error) {
	v, n := binary.Varint(b)
	if n <= 0 {
		return cooldown{}, errBadState
	}
	return cooldown{until: v, reason: string(b[n:])}, nil
}

// ttlSeconds rounds d up to whole seconds, at least one: JetStream per-message
// TTLs have a granularity of one second.
func ttlSeconds(d time.Duration) time.Duration {
	s := (d + time.Second - 1) / time.Second * time.Second
	return max(s, time.Second)
}
