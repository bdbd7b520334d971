package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// Publisher PUBLISHes generated traffic over one Redis connection, pipelined: it writes a chunk
// of commands, then reads their replies. It speaks RESP directly so that the publisher, which
// shares the CPU with the exporter under test, costs as little as possible.
type Publisher struct {
	conn    net.Conn
	w       *bufio.Writer
	r       *bufio.Reader
	gen     *Traffic
	payload []byte
	head    []byte
}

// chunk is how many PUBLISH commands go out before their replies are read.
const chunk = 64

// Dial connects a publisher of gen's traffic to the Redis server at addr.
func Dial(addr string, gen *Traffic) (*Publisher, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	return &Publisher{conn: c, w: bufio.NewWriterSize(c, 256<<10), r: bufio.NewReaderSize(c, 64<<10), gen: gen}, nil
}

// Close closes the connection.
func (p *Publisher) Close() error { return p.conn.Close() }

// Published is what one run of a publisher sent.
type Published struct {
	Messages, Events int64
	// Receivers sums PUBLISH's replies: how many subscribers got each message.
	Receivers int64
	Elapsed   time.Duration
}

// Add sums two results; Elapsed is the longer.
func (a Published) Add(b Published) Published {
	return Published{Messages: a.Messages + b.Messages, Events: a.Events + b.Events,
		Receivers: a.Receivers + b.Receivers, Elapsed: max(a.Elapsed, b.Elapsed)}
}

// Run publishes for d at rate events per second (paced on events, since a message holds 0-24),
// or as fast as it can when the rate is out of its reach.
func (p *Publisher) Run(ctx context.Context, rate float64, d time.Duration) (Published, error) {
	_ = p.conn.SetDeadline(time.Now().Add(d + 10*time.Second))
	return paced(ctx, rate, d, func(now float64, more func(*Published) bool, out *Published) error {
		n := 0
		for n < chunk && more(out) {
			var m Message
			p.payload, m = p.gen.Next(now, p.payload[:0])
			p.writePublish(m.Channel, p.payload)
			out.Messages++
			out.Events += int64(m.Events)
			n++
		}
		if err := p.w.Flush(); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		for range n {
			k, err := p.readInt()
			if err != nil {
				return err
			}
			out.Receivers += k
		}
		return nil
	})
}

// paced calls send until d is over, each time with the clock for event timestamps and more,
// which says whether out is still behind rate; send adds what it published to out.
func paced(ctx context.Context, rate float64, d time.Duration, send func(now float64, more func(*Published) bool, out *Published) error) (Published, error) {
	var out Published
	start := time.Now()
	for ctx.Err() == nil {
		elapsed := time.Since(start)
		if elapsed >= d {
			break
		}
		allowed := rate * elapsed.Seconds()
		if ahead := float64(out.Events) - allowed; ahead >= 0 {
			time.Sleep(max(time.Duration(ahead/rate*float64(time.Second)), 100*time.Microsecond))
			continue
		}
		more := func(o *Published) bool { return float64(o.Events) < allowed }
		if err := send(float64(time.Now().UnixNano())/1e9, more, &out); err != nil {
			return out, err
		}
	}
	out.Elapsed = time.Since(start)
	return out, ctx.Err()
}

func (p *Publisher) writePublish(channel string, payload []byte) {
	h := append(p.head[:0], "*3\r\n$7\r\nPUBLISH\r\n$"...)
	h = strconv.AppendInt(h, int64(len(channel)), 10)
	h = append(h, "\r\n"...)
	h = append(h, channel...)
	h = append(h, "\r\n$"...)
	h = strconv.AppendInt(h, int64(len(payload)), 10)
	h = append(h, "\r\n"...)
	p.head = h
	_, _ = p.w.Write(h)
	_, _ = p.w.Write(payload)
	_, _ = p.w.WriteString("\r\n")
}

// readInt reads an integer reply (":N\r\n").
func (p *Publisher) readInt() (int64, error) {
	line, err := p.r.ReadSlice('\n')
	if err != nil {
		return 0, fmt.Errorf("publish reply: %w", err)
	}
	if len(line) < 4 || line[0] != ':' {
		return 0, fmt.Errorf("publish reply: %w: %q", errUnexpected, line)
	}
	return strconv.ParseInt(string(line[1:len(line)-2]), 10, 64)
}

var errUnexpected = errors.New("unexpected reply")
