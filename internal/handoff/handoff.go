package handoff

import (
	"context"
	"sync"
	"time"
)

// Buffer is a FIFO of payloads bounded in count and in bytes: 65,536 events of a few KB each
// held 122-230 MiB while the decoder fell behind, more than the container's memory limit. One
// goroutine pushes, Forward hands them on.
type Buffer struct {
	maxCount, maxBytes int
	notify             chan struct{}

	mu     sync.Mutex
	items  []string
	head   int
	bytes  int
	pushed uint64
}

// NewBuffer returns a buffer of at most maxCount payloads and maxBytes bytes (maxBytes <= 0: no
// byte bound).
func NewBuffer(maxCount, maxBytes int) *Buffer {
	if maxCount <= 0 {
		maxCount = 1
	}
	if maxBytes <= 0 {
		maxBytes = int(^uint(0) >> 1)
	}
	return &Buffer{maxCount: maxCount, maxBytes: maxBytes, notify: make(chan struct{}, 1)}
}

// Push appends p, or reports false when it does not fit (the caller counts it dropped).
func (b *Buffer) Push(p string) bool {
	b.mu.Lock()
	if len(b.items)-b.head >= b.maxCount || b.bytes+len(p) > b.maxBytes {
		b.mu.Unlock()
		return false
	}
	if b.head > 0 && b.head >= len(b.items)/2 { // reuse the consumed front
		n := copy(b.items, b.items[b.head:])
		clear(b.items[n:])
		b.items, b.head = b.items[:n], 0
	}
	b.items = append(b.items, p)
	b.bytes += len(p)
	b.pushed++
	b.mu.Unlock()
	select {
	case b.notify <- struct{}{}:
	default:
	}
	return true
}

// Pushed is the number of payloads accepted so far: the position in the stream of the next one.
func (b *Buffer) Pushed() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pushed
}

// Size is the number of payloads waiting, and their bytes.
func (b *Buffer) Size() (payloads, bytes int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.items) - b.head, b.bytes
}

// Forward hands payloads to out, one at a time, until ctx is done. A payload leaves the buffer
// (and its bytes stop counting) only once the consumer took it.
func (b *Buffer) Forward(ctx context.Context, out chan<- string) {
	for {
		p, ok := b.peek()
		if !ok {
			select {
			case <-b.notify:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case out <- p:
			b.pop()
		case <-ctx.Done():
			return
		}
	}
}

func (b *Buffer) peek() (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.head == len(b.items) {
		return "", false
	}
	return b.items[b.head], true
}

func (b *Buffer) pop() {
	b.mu.Lock()
	b.bytes -= len(b.items[b.head])
	b.items[b.head] = ""
	b.head++
	if b.head == len(b.items) {
		b.items, b.head = b.items[:0], 0
	}
	b.mu.Unlock()
}

// maxPositions bounds the gap positions remembered: more gaps than that not yet reached by the
// consumer count as reached.
const maxPositions = 64

// Gaps records when a reader lost its broker: the total time, and where in the stream each gap
// falls, so the consumer can tell which payloads came after it. Safe for concurrent use.
type Gaps struct {
	mu        sync.Mutex
	downSince time.Time     // zero while up or before the first connection
	downTotal time.Duration // closed gaps
	count     uint64
	positions []uint64 // of the last maxPositions gaps, ascending
}

// Down marks the start of a gap after the first pos payloads of the stream.
func (g *Gaps) Down(pos uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.downSince.IsZero() {
		return
	}
	g.downSince = time.Now()
	g.count++
	if len(g.positions) == maxPositions {
		g.positions = append(g.positions[:0], g.positions[1:]...)
	}
	g.positions = append(g.positions, pos)
}

// Up ends the current gap, if any.
func (g *Gaps) Up() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.downSince.IsZero() {
		g.downTotal += time.Since(g.downSince)
		g.downSince = time.Time{}
	}
}

// DownSeconds is the time spent in gaps, the current one included.
func (g *Gaps) DownSeconds() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.downTotal
	if !g.downSince.IsZero() {
		d += time.Since(g.downSince)
	}
	return d.Seconds()
}

// Before is the number of gaps that fall before the payload at position n of the stream (0 is
// the first): the gaps a consumer has passed once it took payload n.
func (g *Gaps) Before(n uint64) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	c := g.count
	for i := len(g.positions) - 1; i >= 0 && g.positions[i] > n; i-- {
		c--
	}
	return c
}
