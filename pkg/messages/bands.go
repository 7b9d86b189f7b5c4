package messages

import (
	"errors"
	"fmt"
	"sort"
)

// DefaultBandBounds are the upper bounds of the default ten bands: priority
// ≤ 0 is band 0, 1 is band 1, …, 8 is band 8 and anything above is band 9.
var DefaultBandBounds = []int64{0, 1, 2, 3, 4, 5, 6, 7, 8}

// Bands maps priorities to bands. Its bounds are ascending upper bounds: a
// priority p goes to the first band i with p ≤ bounds[i], and above the last
// bound to the last band, so there are len(bounds)+1 bands. Band 0 is served
// first. Bands is immutable and safe for concurrent use.
type Bands struct {
	bounds []int64
}

// NewBands checks bounds (strictly ascending, 1 to 63 entries) and returns the table.
func NewBands(bounds []int64) (Bands, error) {
	if len(bounds) == 0 || len(bounds) > 63 {
		return Bands{}, errors.New("priority bands: need 1 to 63 bounds")
	}
	for i := 1; i < len(bounds); i++ {
		if bounds[i] <= bounds[i-1] {
			return Bands{}, fmt.Errorf("priority bands: bound %d (%d) is not above bound %d (%d)", i, bounds[i], i-1, bounds[i-1])
		}
	}
	return Bands{bounds: append([]int64(nil), bounds...)}, nil
}

// DefaultBands returns the table of [DefaultBandBounds].
func DefaultBands() Bands {
	b, _ := NewBands(DefaultBandBounds)
	return b
}

// Count is the number of bands.
func (b Bands) Count() int { return len(b.bounds) + 1 }

// Band returns the band of priority p.
func (b Bands) Band(p int64) int {
	return sort.Search(len(b.bounds), func(i int) bool { return p <= b.bounds[i] })
}
