package collector

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Real replies of a Redis server (miniredis) and real client failures, sorted by the one rule:
// the key's problem, or Redis cannot be read.
func TestIsKeyError(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  func(t *testing.T, mr *miniredis.Miniredis, c *redis.Client) error
		want bool
	}{
		{"missing key (nil reply)", func(t *testing.T, _ *miniredis.Miniredis, c *redis.Client) error {
			return c.Get(context.Background(), "absent").Err()
		}, true},
		{"WRONGTYPE", func(t *testing.T, mr *miniredis.Miniredis, c *redis.Client) error {
			mr.Lpush("k", "v")
			return c.Get(context.Background(), "k").Err()
		}, true},
		{"WRONGTYPE wrapped with context", func(t *testing.T, mr *miniredis.Miniredis, c *redis.Client) error {
			mr.Lpush("k", "v")
			return fmt.Errorf("GETRANGE k: %w", c.GetRange(context.Background(), "k", 0, 10).Err())
		}, true},
		{"NOPERM", func(t *testing.T, mr *miniredis.Miniredis, c *redis.Client) error {
			mr.SetError("NOPERM this user has no permissions to access one of the keys used as arguments")
			return c.Get(context.Background(), "k").Err()
		}, false},
		{"LOADING", func(t *testing.T, mr *miniredis.Miniredis, c *redis.Client) error {
			mr.SetError("LOADING Redis is loading the dataset in memory")
			return c.Get(context.Background(), "k").Err()
		}, false},
		{"unknown command", func(t *testing.T, _ *miniredis.Miniredis, c *redis.Client) error {
			return c.Do(context.Background(), "NOSUCHCOMMAND").Err()
		}, false},
		{"connection refused", func(t *testing.T, mr *miniredis.Miniredis, c *redis.Client) error {
			mr.Close()
			return c.Get(context.Background(), "k").Err()
		}, false},
		{"context canceled", func(t *testing.T, _ *miniredis.Miniredis, c *redis.Client) error {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return c.Get(ctx, "k").Err()
		}, false},
		{"WRONGTYPE text that is no Redis reply", func(*testing.T, *miniredis.Miniredis, *redis.Client) error {
			return errors.New("WRONGTYPE said a proxy")
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mr := miniredis.RunT(t)
			c := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
			defer c.Close()
			err := tc.err(t, mr, c)
			if err == nil {
				t.Fatal("the command did not fail")
			}
			if got := isKeyError(err); got != tc.want {
				t.Errorf("isKeyError(%v) = %v, want %v", err, got, tc.want)
			}
		})
	}
}

// A pipeline is read command by command only when every failure is its key's.
func TestOnlyReplyErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(mr *miniredis.Miniredis)
		want  bool
	}{
		{"all keys answer", func(mr *miniredis.Miniredis) { mr.Set("s", "1"); mr.Set("l", "1") }, true},
		{"one key missing, one of another type", func(mr *miniredis.Miniredis) { mr.Lpush("l", "v") }, true},
		{"the server refuses (NOPERM)", func(mr *miniredis.Miniredis) { mr.SetError("NOPERM no permissions") }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mr := miniredis.RunT(t)
			c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			defer c.Close()
			tc.setup(mr)
			pipe := c.Pipeline()
			pipe.Get(context.Background(), "s")
			pipe.Get(context.Background(), "l")
			cmds, _ := pipe.Exec(context.Background())
			if got := onlyReplyErrors(cmds); got != tc.want {
				t.Errorf("onlyReplyErrors = %v, want %v", got, tc.want)
			}
		})
	}
}

// The breakers follow the rule: a key of the wrong type is that breaker's problem, while a server
// refusal (NOPERM) fails the source, as it fails the broker source.
func TestBreakerRedisErrors(t *testing.T) {
	const cfg = "breakers:\n  - {name: a, key: ka, format: json}\n  - {name: b, key: kb, format: json}\n"
	t.Run("WRONGTYPE", func(t *testing.T) {
		_, mr, c := newTestBreakers(t, cfg)
		mr.Lpush("ka", "v")
		mr.Set("kb", `{"until": 0}`)
		compare(t, c, `celery_breaker_open{breaker="b"} 0
celery_breaker_read_ok{breaker="a"} 0
celery_breaker_read_ok{breaker="b"} 1
celery_exporter_app_values_oversize_total{} 0
`)
		if c.err != nil {
			t.Errorf("Scrape failed for one key of the wrong type: %v", c.err)
		}
	})
	t.Run("NOPERM", func(t *testing.T) {
		_, mr, c := newTestBreakers(t, cfg)
		mr.SetError("NOPERM this user has no permissions to access one of the keys used as arguments")
		compare(t, c, `celery_breaker_read_ok{breaker="a"} 0
celery_breaker_read_ok{breaker="b"} 0
celery_exporter_app_values_oversize_total{} 0
`)
		if c.err == nil {
			t.Error("Scrape succeeded while Redis refuses the exporter (NOPERM)")
		}
	})
}
