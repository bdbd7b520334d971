package collector

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A labelSet keeps at most maxValues values of at most maxBytes bytes; the rest become "other",
// each counted once per refusal; values already kept always pass, and a deleted one frees its
// place.
func TestLabelSet(t *testing.T) {
	tests := []struct {
		name                string
		maxValues, maxBytes int
		feed                []string
		want                []string // label values returned, in order
		overflow            float64
	}{
		{name: "under the cap", maxValues: 3, feed: []string{"a", "b", "a"}, want: []string{"a", "b", "a"}},
		{name: "count cap", maxValues: 2, feed: []string{"a", "b", "c", "a", "c"},
			want: []string{"a", "b", overflowValue, "a", overflowValue}, overflow: 2},
		{name: "byte cap", maxValues: 10, maxBytes: 4, feed: []string{"abcd", "abcde", "abcd"},
			want: []string{"abcd", overflowValue, "abcd"}, overflow: 1},
		{name: "no byte cap", maxValues: 1, feed: []string{strings.Repeat("x", 5000)}, want: []string{strings.Repeat("x", 5000)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			overflow := prometheus.NewCounter(prometheus.CounterOpts{Name: "overflow"})
			s := newLabelSet(tt.maxValues, tt.maxBytes, overflow)
			for i, v := range tt.feed {
				if got := s.Value(v); got != tt.want[i] {
					t.Errorf("Value(%.10q) = %.10q, want %.10q", v, got, tt.want[i])
				}
			}
			if got := testutil.ToFloat64(overflow); got != tt.overflow {
				t.Errorf("overflow %v, want %v", got, tt.overflow)
			}
		})
	}

	s := newLabelSet(1, 0, nil) // overflow not counted
	if !s.Add("a") || s.Add("b") || !s.Full() || !s.Has("a") || s.Has("b") {
		t.Fatal("Add at the cap")
	}
	s.Delete("a")
	if s.Full() || s.Value("b") != "b" {
		t.Error("a deleted value does not free its place")
	}
	var all []string
	s.Each(func(v string) { all = append(all, v) })
	if strings.Join(all, ",") != "b" {
		t.Errorf("Each: %v", all)
	}
}
