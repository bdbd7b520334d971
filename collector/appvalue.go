// App values: numbers the application keeps in Redis (app_values), read by the BreakerScraper
// in the same pipeline as the breakers.

package collector

import (
	"context"
	"fmt"
	"math/big"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/internal/pickle"
)

var appValueDesc = prometheus.NewDesc(
	prometheus.BuildFQName(Namespace, "app", "value"),
	"A numeric value the application keeps in Redis (app_values in the configuration file).",
	[]string{"name"}, nil,
)

// appValueCmds are one app value's commands in a pipeline: its (bounded) value and its TTL,
// which tells a missing key from an empty one.
type appValueCmds struct {
	get  *redis.StringCmd
	pttl *redis.DurationCmd
}

func queueAppValue(ctx context.Context, pipe redis.Pipeliner, key string) appValueCmds {
	return appValueCmds{get: boundedGet(ctx, pipe, key), pttl: pipe.PTTL(ctx, key)}
}

// value reads the executed commands: the number (a's default, maybe nil, when the key is
// missing), whether the value was over maxValueBytes, or why it cannot be read.
func (c appValueCmds) value(a config.AppValue) (v *float64, oversize bool, err error) {
	raw, err := c.get.Bytes()
	switch {
	case err == nil && missing(c.pttl):
		return a.Default, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("GETRANGE %s: %w", a.Key, err)
	}
	f, err := parseAppValue(raw)
	if err != nil {
		return nil, len(raw) > maxValueBytes, fmt.Errorf("key %s: %w", a.Key, err)
	}
	return &f, len(raw) > maxValueBytes, nil
}

// parseAppValue reads a number as django-redis stores it: digits for an int, a pickle for a
// float or bool; plain decimal strings (e.g. set by redis-cli or INCRBYFLOAT) too.
func parseAppValue(raw []byte) (float64, error) {
	if len(raw) > maxValueBytes {
		return 0, fmt.Errorf("value of %d bytes is over the %d limit", len(raw), maxValueBytes)
	}
	if f, err := strconv.ParseFloat(strings.TrimSpace(string(raw)), 64); err == nil {
		return f, nil
	}
	v, err := pickle.Decode(raw)
	if err != nil {
		return 0, fmt.Errorf("neither a number nor a pickle: %w", err)
	}
	switch x := v.(type) {
	case float64, int64, *big.Int, bool:
		return toTimestamp(x)
	default:
		return 0, fmt.Errorf("pickled %T is not a number", v)
	}
}
