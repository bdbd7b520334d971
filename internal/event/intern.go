package event

import (
	"strings"
	"sync"
	"unicode/utf8"
)

// Interner returns one shared string per distinct value, so label values repeated in every event
// are allocated once. Values become valid UTF-8 (invalid bytes replaced): they end up as label
// values, and an invalid one makes a metric fail at scrape time. It is bounded: past its cap it stops remembering new values (they are still
// returned, just not shared), so hostile input cannot grow it without limit.
type Interner struct {
	mu  sync.Mutex
	m   map[string]string
	cap int
}

// NewInterner returns an Interner that remembers at most capacity strings.
func NewInterner(capacity int) *Interner {
	return &Interner{m: make(map[string]string), cap: capacity}
}

// Bytes returns the interned string equal to b.
func (in *Interner) Bytes(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	in.mu.Lock()
	s, ok := in.m[string(b)] // no allocation for the lookup
	if !ok {
		key := string(b)
		s = key
		if !utf8.ValidString(s) {
			s = strings.ToValidUTF8(s, "\uFFFD")
		}
		if len(in.m) < in.cap {
			in.m[key] = s
		}
	}
	in.mu.Unlock()
	return s
}
