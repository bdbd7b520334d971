package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// bigCollector exposes families × series gauges with long label values: a /metrics of several
// MB, larger than what the kernel buffers for a client that does not read.
type bigCollector struct{ families, series, pad int }

func (bigCollector) Describe(chan<- *prometheus.Desc) {}

func (c bigCollector) Collect(ch chan<- prometheus.Metric) {
	pad := strings.Repeat("x", c.pad)
	for f := 0; f < c.families; f++ {
		d := prometheus.NewDesc(fmt.Sprintf("test_family_%d", f), "A test family.", []string{"id", "pad"}, nil)
		for i := 0; i < c.series; i++ {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(i), fmt.Sprint(i), pad)
		}
	}
}

func bigRegistry(families, series, pad int) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(bigCollector{families, series, pad})
	return reg
}

// startServer runs the handler in an http.Server set up as serve() sets it up, on a free port.
func startServer(t *testing.T, h http.Handler, write time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: write}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// rawGet sends a GET for /metrics and returns the connection unread.
func rawGet(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}

func get(addr string) (int, int, error) {
	c := http.Client{Timeout: 60 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, len(b), err
}

// Clients that open a scrape of a large /metrics and never read must neither starve the others
// (the old limit of 10 in flight answered 503 to everyone else) nor hold their slot for ever.
func TestSlowReadersDoNotStarveScrapers(t *testing.T) {
	g := &sharedGatherer{g: bigRegistry(8, 1000, 3000)} // ~24 MB, above what loopback buffers hold; cheap to gather
	// Long enough for a whole scrape under -race on a busy machine, short for the test.
	const write = 20 * time.Second
	addr := startServer(t, metricsHandler(log.NewNopLogger(), g, maxScrapesInFlight), write)
	_, full, err := get(addr)
	if err != nil {
		t.Fatal(err)
	}
	var slow []net.Conn
	opened := time.Now()
	for i := 0; i < 11; i++ { // more than the old limit of 10 in flight
		slow = append(slow, rawGet(t, addr))
	}
	t.Logf("first scrape: %d bytes", full)
	for i := 0; i < 2; i++ {
		code, n, err := get(addr)
		if err != nil || code != http.StatusOK || n != full {
			t.Fatalf("scrape %d beside 11 slow readers: %d, %d of %d bytes, %v", i, code, n, full, err)
		}
	}
	// The write timeout ends each slow reader's response: reading now, it gets less than the whole
	// body and then the connection closes.
	var wg sync.WaitGroup
	for i, c := range slow {
		wg.Go(func() {
			defer c.Close()
			time.Sleep(time.Until(opened.Add(write + time.Second))) // past the write timeout: the condition under test
			_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
			n, err := io.Copy(io.Discard, bufio.NewReader(c))
			if err != nil && !isReset(err) {
				t.Errorf("slow reader %d: %v", i, err)
			}
			if n >= int64(full) {
				t.Errorf("slow reader %d got the whole body (%d bytes): no write timeout", i, n)
			}
		})
	}
	wg.Wait()
	t.Logf("took %v", time.Since(opened))
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "reset by peer") || strings.Contains(err.Error(), "EOF")
}

// blockingGatherer gathers once released, counting its calls.
type blockingGatherer struct {
	release chan struct{}
	reg     *prometheus.Registry
}

func (b blockingGatherer) Gather() ([]*dto.MetricFamily, error) {
	<-b.release
	return b.reg.Gather()
}

// N scrapes at once cost one gather: they share its result, never N copies of every series.
func TestConcurrentScrapesShareOneGather(t *testing.T) {
	bg := blockingGatherer{release: make(chan struct{}), reg: bigRegistry(2, 100, 10)}
	g := &sharedGatherer{g: bg}
	addr := startServer(t, metricsHandler(log.NewNopLogger(), g, maxScrapesInFlight), time.Minute)
	const n = 8
	type res struct {
		code, size int
		err        error
	}
	out := make(chan res, n)
	for i := 0; i < n; i++ {
		go func() {
			code, size, err := get(addr)
			out <- res{code, size, err}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for g.waiting.Load() != n-1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d scrapes waiting on the shared gather, want %d", g.waiting.Load(), n-1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(bg.release)
	var size int
	for i := 0; i < n; i++ {
		r := <-out
		if r.err != nil || r.code != http.StatusOK {
			t.Fatalf("scrape: %d %v", r.code, r.err)
		}
		if size != 0 && r.size != size {
			t.Errorf("scrapes differ: %d and %d bytes", size, r.size)
		}
		size = r.size
	}
	if got := g.gathers.Load(); got != 1 {
		t.Errorf("%d gathers for %d concurrent scrapes, want 1", got, n)
	}
}

// A client hanging up mid-scrape is one log line, not one per family that could not be sent.
func TestClientHangingUpLogsOneLine(t *testing.T) {
	var buf syncBuffer
	logger := log.NewLogfmtLogger(&buf)
	g := &sharedGatherer{g: bigRegistry(60, 100, 3000)} // 60 families, ~18 MB
	addr := startServer(t, metricsHandler(logger, g, maxScrapesInFlight), time.Minute)
	c := rawGet(t, addr)
	if _, err := c.Read(make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(buf.String(), "scrape failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line after the client hung up; log:\n%s", buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if lines := strings.Count(strings.TrimSpace(buf.String()), "\n") + 1; lines != 1 {
		t.Errorf("%d log lines for one failed scrape, want 1:\n%s", lines, buf.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
