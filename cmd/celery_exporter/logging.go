package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
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

// slogBridge is a slog.Handler writing to the go-kit logger (one without a caller valuer), so what exporter-toolkit logs (it
// takes a *slog.Logger) comes out in the same stream, format and level filter.
type slogBridge struct {
	logger log.Logger
	attrs  []any
	group  string
}

func (h slogBridge) Enabled(context.Context, slog.Level) bool { return true } // go-kit filters

func (h slogBridge) Handle(_ context.Context, r slog.Record) error {
	kv := make([]any, 0, 6+len(h.attrs)+2*r.NumAttrs())
	if r.PC != 0 {
		// The go-kit caller valuer would name this file; slog knows the real caller.
		f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		kv = append(kv, "caller", filepath.Base(f.File)+":"+strconv.Itoa(f.Line))
	}
	kv = append(kv, "msg", r.Message)
	kv = append(kv, h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		kv = append(kv, h.key(a.Key), a.Value.Resolve().Any())
		return true
	})
	var l log.Logger
	switch {
	case r.Level >= slog.LevelError:
		l = level.Error(h.logger)
	case r.Level >= slog.LevelWarn:
		l = level.Warn(h.logger)
	case r.Level >= slog.LevelInfo:
		l = level.Info(h.logger)
	default:
		l = level.Debug(h.logger)
	}
	return l.Log(kv...)
}

func (h slogBridge) key(k string) string {
	if h.group == "" {
		return k
	}
	return h.group + "." + k
}

func (h slogBridge) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := h
	n.attrs = append(append([]any{}, h.attrs...), nil)[:len(h.attrs)]
	for _, a := range attrs {
		n.attrs = append(n.attrs, h.key(a.Key), a.Value.Resolve().Any())
	}
	return n
}

func (h slogBridge) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := h
	n.group = strings.TrimPrefix(h.group+"."+name, ".")
	return n
}

func slogLogger(l log.Logger) *slog.Logger { return slog.New(slogBridge{logger: l}) }

// redisLogger sends go-redis' own messages (dial failures while the broker is down) to the
// exporter's log at debug level: the sources already log each outage once, at warn.
type redisLogger struct{ logger log.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	level.Debug(l.logger).Log("msg", fmt.Sprintf(format, v...), "component", "go-redis")
}
