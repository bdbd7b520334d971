package handoff

import (
	"testing"
	"time"
)

// The buffer drops past either bound, hands payloads on in order, and counts only what it took.
func TestBufferBoundsAndOrder(t *testing.T) {
	for _, tc := range []struct {
		name               string
		maxCount, maxBytes int
		push               []string
		wantKept           []string
	}{
		{"count bound", 2, 0, []string{"a", "b", "c"}, []string{"a", "b"}},
		{"byte bound", 10, 5, []string{"abc", "de", "f"}, []string{"abc", "de"}},
		{"a payload larger than the bound", 10, 3, []string{"abcd", "ab"}, []string{"ab"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBuffer(tc.maxCount, tc.maxBytes)
			dropped := 0
			for _, p := range tc.push {
				if !b.Push(p) {
					dropped++
				}
			}
			bytes := 0
			for _, p := range tc.wantKept {
				bytes += len(p)
			}
			if n, by := b.Size(); n != len(tc.wantKept) || by != bytes || dropped != len(tc.push)-len(tc.wantKept) ||
				b.Pushed() != uint64(len(tc.wantKept)) {
				t.Fatalf("size %d/%d bytes, dropped %d, pushed %d; want %d/%d", n, by, dropped, b.Pushed(), len(tc.wantKept), bytes)
			}
			out := make(chan string)
			go b.Forward(t.Context(), out)
			for _, want := range tc.wantKept {
				select {
				case got := <-out:
					if got != want {
						t.Fatalf("got %q, want %q", got, want)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("nothing forwarded")
				}
			}
		})
	}
}

// Gaps tell which payloads come after them, and their time counts while down only.
func TestGaps(t *testing.T) {
	var g Gaps
	if g.Before(0) != 0 || g.DownSeconds() != 0 {
		t.Fatal("no gap yet")
	}
	g.Down(3) // after payloads 0, 1, 2
	g.Down(3) // still the same gap
	g.Up()
	g.Down(5)
	for n, want := range map[uint64]uint64{0: 0, 2: 0, 3: 1, 4: 1, 5: 2, 100: 2} {
		if got := g.Before(n); got != want {
			t.Errorf("Before(%d) = %d, want %d", n, got, want)
		}
	}
	d := g.DownSeconds()
	g.Up()
	if e := g.DownSeconds(); e < d {
		t.Errorf("down seconds went from %v to %v", d, e)
	}
	if e := g.DownSeconds(); e != g.DownSeconds() {
		t.Error("down seconds grow while up")
	}
}
