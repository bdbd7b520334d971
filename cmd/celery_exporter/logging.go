package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	sloggokit "github.com/tjhop/slog-gokit"
)

// newLogger builds the exporter's go-kit logger: logfmt or json, filtered by level, with a UTC
// timestamp. withCaller adds the caller of each Log call.
func newLogger(w io.Writer, lvl, format string) (log.Logger, error) {
	var l log.Logger
	switch format {
	case "logfmt":
		l = log.NewLogfmtLogger(log.NewSyncWriter(w))
	case "json":
		l = log.NewJSONLogger(log.NewSyncWriter(w))
	default:
		return nil, fmt.Errorf("unknown --log.format %q (want logfmt or json)", format)
	}
	var opt level.Option
	switch lvl {
	case "debug":
		opt = level.AllowDebug()
	case "info":
		opt = level.AllowInfo()
	case "warn":
		opt = level.AllowWarn()
	case "error":
		opt = level.AllowError()
	default:
		return nil, fmt.Errorf("unknown --log.level %q (want debug, info, warn or error)", lvl)
	}
	l = level.NewFilter(l, opt)
	return log.With(l, "ts", log.DefaultTimestampUTC), nil
}

func withCaller(l log.Logger) log.Logger { return log.With(l, "caller", log.DefaultCaller) }

// slogLogger gives exporter-toolkit (which takes a *slog.Logger) the exporter's go-kit logger, one
// without a caller valuer: the same stream, format and level filter, and slog's own caller.
func slogLogger(l log.Logger) *slog.Logger {
	// Debug: every record goes through, and the go-kit logger's level filter decides.
	return slog.New(untimed{sloggokit.NewGoKitHandler(l, slog.LevelDebug)})
}

// untimed drops the record's time: the go-kit logger stamps its own ts, in UTC.
type untimed struct{ slog.Handler }

func (h untimed) Handle(ctx context.Context, r slog.Record) error {
	r.Time = time.Time{}
	return h.Handler.Handle(ctx, r)
}

func (h untimed) WithAttrs(attrs []slog.Attr) slog.Handler {
	return untimed{h.Handler.WithAttrs(attrs)}
}

func (h untimed) WithGroup(name string) slog.Handler { return untimed{h.Handler.WithGroup(name)} }

// redisLogger sends go-redis' own messages (dial failures while the broker is down) to the
// exporter's log at debug level: the sources already log each outage once, at warn.
type redisLogger struct{ logger log.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	level.Debug(l.logger).Log("msg", fmt.Sprintf(format, v...), "component", "go-redis")
}
