package messages_test

import (
	"math"
	"testing"

	"github.com/llmq/llmq/pkg/messages"
)

func TestDefaultBands(t *testing.T) {
	b := messages.DefaultBands()
	if got := b.Count(); got != 10 {
		t.Fatalf("DefaultBands().Count() = %d, want 10", got)
	}
	tests := []struct {
		priority int64
		band     int
	}{
		{math.MinInt64, 0},
		{-5, 0},
		{-1, 0},
		{0, 0},
		{1, 1},
		{2, 2},
		{7, 7},
		{8, 8},
		{9, 9},
		{10, 9},
		{1 << 40, 9},
		{math.MaxInt64, 9},
	}
	for _, tt := range tests {
		if got := b.Band(tt.priority); got != tt.band {
			t.Errorf("DefaultBands().Band(%d) = %d, want %d", tt.priority, got, tt.band)
		}
	}
}

func TestCustomBands(t *testing.T) {
	b, err := messages.NewBands([]int64{10, 20})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Count(); got != 3 {
		t.Fatalf("Count() = %d, want 3", got)
	}
	tests := []struct {
		priority int64
		band     int
	}{
		{math.MinInt64, 0},
		{-100, 0},
		{0, 0},
		{10, 0},
		{11, 1},
		{20, 1},
		{21, 2},
		{math.MaxInt64, 2},
	}
	for _, tt := range tests {
		if got := b.Band(tt.priority); got != tt.band {
			t.Errorf("Band(%d) = %d, want %d", tt.priority, got, tt.band)
		}
	}
}

func TestNewBandsCopiesBounds(t *testing.T) {
	bounds := []int64{10, 20}
	b, err := messages.NewBands(bounds)
	if err != nil {
		t.Fatal(err)
	}
	bounds[0] = 100
	if got := b.Band(15); got != 1 {
		t.Errorf("after changing the caller's slice, Band(15) = %d, want 1", got)
	}
}

func TestNewBandsErrors(t *testing.T) {
	ascending := func(n int) []int64 {
		out := make([]int64, n)
		for i := range out {
			out[i] = int64(i)
		}
		return out
	}
	if _, err := messages.NewBands(ascending(63)); err != nil {
		t.Errorf("NewBands with 63 bounds: %v", err)
	}
	if _, err := messages.NewBands([]int64{math.MinInt64, math.MaxInt64}); err != nil {
		t.Errorf("NewBands with extreme bounds: %v", err)
	}
	tests := []struct {
		name   string
		bounds []int64
	}{
		{"nil", nil},
		{"empty", []int64{}},
		{"equal", []int64{1, 1}},
		{"descending", []int64{2, 1}},
		{"not ascending later", []int64{0, 5, 3}},
		{"more than 63", ascending(64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if b, err := messages.NewBands(tt.bounds); err == nil {
				t.Errorf("NewBands(%v) = %d bands, want an error", tt.bounds, b.Count())
			}
		})
	}
}
