package collector

import "github.com/prometheus/client_golang/prometheus"

// labelSet bounds the values one label may take: label values come from the workers, the
// producers or the app's Redis, and every new value is a new series that is never removed. Past
// the cap a value becomes overflowValue ("other") and the overflow is counted. A value longer
// than the byte cap is refused the same way, so the set's memory is bounded by both caps
// together. A labelSet belongs to one goroutine (it has no lock).
type labelSet struct {
	maxValues, maxBytes int
	values              map[string]struct{}
	overflow            prometheus.Counter // counts the values refused; nil: not counted
}

// newLabelSet returns a set of at most maxValues values of at most maxBytes bytes each (0: no
// byte cap). overflow, if not nil, counts the values Value refuses.
func newLabelSet(maxValues, maxBytes int, overflow prometheus.Counter) *labelSet {
	return &labelSet{maxValues: maxValues, maxBytes: maxBytes, values: map[string]struct{}{}, overflow: overflow}
}

// Add keeps v if it is in the set or there is room for it, and tells whether it is in the set
// now. A refusal is not counted: Add is for values the exporter itself proposes.
func (s *labelSet) Add(v string) bool {
	if _, ok := s.values[v]; ok {
		return true
	}
	if len(s.values) >= s.maxValues || (s.maxBytes > 0 && len(v) > s.maxBytes) {
		return false
	}
	s.values[v] = struct{}{}
	return true
}

// Value is the label value to use for v: v itself if Add keeps it, else overflowValue, counted.
func (s *labelSet) Value(v string) string {
	if s.Add(v) {
		return v
	}
	if s.overflow != nil {
		s.overflow.Inc()
	}
	return overflowValue
}

// Has tells whether v is in the set.
func (s *labelSet) Has(v string) bool {
	_, ok := s.values[v]
	return ok
}

// Full tells whether a new value would be refused for want of room.
func (s *labelSet) Full() bool { return len(s.values) >= s.maxValues }

// Delete frees v's place (its series were deleted).
func (s *labelSet) Delete(v string) { delete(s.values, v) }

// Each calls fn with every value, in no order.
func (s *labelSet) Each(fn func(v string)) {
	for v := range s.values {
		fn(v)
	}
}
