// The one rule for Redis errors shared by the sources that read Redis at scrape time (broker,
// breakers and app values).

package collector

import (
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// isKeyError reports whether a failed command failed because of its key alone: the key does not
// exist (redis.Nil) or holds another type (WRONGTYPE, e.g. a key of a queue's name that is not a
// list). Such an error is that key's problem: the source reports the key (a breaker's read_ok 0,
// a queue's length 0) and the rest of its scrape.
//
// Every other error means Redis could not be read, and the whole source fails
// (celery_exporter_collector_success 0): the connection or a timeout, and the server's refusals
// too (NOPERM, NOAUTH, LOADING, MASTERDOWN, READONLY...). A NOPERM names one key, but it is the
// deployment's ACL that is wrong, not the key's value: reported as one unreadable key it would
// page as a bad value, and the broker and the breakers would disagree about the same refusal.
func isKeyError(err error) bool {
	if errors.Is(err, redis.Nil) {
		return true
	}
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "WRONGTYPE ")
}

// onlyReplyErrors tells whether every failed command of an executed pipeline failed only because
// of its key (isKeyError), so that the pipeline's answers can be read command by command.
func onlyReplyErrors(cmds []redis.Cmder) bool {
	for _, c := range cmds {
		if err := c.Err(); err != nil && !isKeyError(err) {
			return false
		}
	}
	return true
}
