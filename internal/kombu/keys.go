package kombu

import (
	"strconv"
	"strings"
)

// Exchange names Celery uses by default (settings event_exchange and control_exchange).
const (
	DefaultEventExchange   = "celeryev"
	DefaultControlExchange = "celery"
	bindingPrefix          = "_kombu.binding."
	pidboxSuffix           = ".pidbox"
	replyPrefix            = "reply."
)

// Keyspace names the Redis keys and pub/sub channels of one broker DB, as kombu builds them:
// global_keyprefix first, verbatim; fanout channels carry "/<db>." unless fanout_prefix is off.
type Keyspace struct {
	Prefix         string
	DB             int
	Sep            string
	Steps          []int
	FanoutPatterns bool
	UnackedName    string
	UnackedIndex   string
	// fanout holds the fanout prefixes in use: one normally, two for Sentinel, where kombu < 5.4
	// never filled in {db} and sent to the literal "/{db}." (fixed in kombu 5.4.0).
	fanout []string
}

// NewKeyspace combines the broker URL and transport options.
func NewKeyspace(b *Broker, o Options) Keyspace {
	k := Keyspace{
		Prefix:         o.GlobalKeyPrefix,
		DB:             b.DB,
		Sep:            o.Sep,
		Steps:          o.PrioritySteps,
		FanoutPatterns: o.FanoutPatterns,
		UnackedName:    o.UnackedKey,
		UnackedIndex:   o.UnackedIndexKey,
	}
	if o.FanoutPrefix == "" {
		k.fanout = []string{""}
		return k
	}
	k.fanout = []string{strings.ReplaceAll(o.FanoutPrefix, "{db}", strconv.Itoa(b.DB))}
	if b.Sentinel() && strings.Contains(o.FanoutPrefix, "{db}") {
		k.fanout = append(k.fanout, o.FanoutPrefix)
	}
	return k
}

// Key is a Redis key with the global prefix.
func (k Keyspace) Key(name string) string { return k.Prefix + name }

// PriorityKey is one of the lists a queue is stored in.
type PriorityKey struct {
	Priority int
	Key      string
}

// QueueKeys lists a queue's lists in consuming order: kombu BRPOPs them in step order, so step 0
// is served first (on Redis, 0 is the highest priority). A queue always has its plain key.
func (k Keyspace) QueueKeys(queue string) []PriorityKey {
	steps := k.Steps
	if len(steps) == 0 {
		steps = []int{0}
	}
	out := make([]PriorityKey, 0, len(steps))
	for _, s := range steps {
		key := k.Prefix + queue
		if s != 0 {
			key += k.Sep + strconv.Itoa(s)
		}
		out = append(out, PriorityKey{Priority: s, Key: key})
	}
	return out
}

// EventPatterns are the PSUBSCRIBE patterns that receive every event of exchange, whatever the
// routing key (kombu's EventReceiver binds '#', which it turns into '*').
func (k Keyspace) EventPatterns(exchange string) []string {
	out := make([]string, 0, len(k.fanout))
	for _, f := range k.fanout {
		p := globEscape(k.Prefix + f + exchange)
		if k.FanoutPatterns {
			p += "/*"
		}
		out = append(out, p)
	}
	return out
}

// FanoutChannels are the channels a message to a fanout exchange with an empty routing key is
// PUBLISHed to (the pidbox: "/<db>.celery.pidbox", never with a "/rk" suffix).
func (k Keyspace) FanoutChannels(exchange string) []string {
	out := make([]string, 0, len(k.fanout))
	for _, f := range k.fanout {
		out = append(out, k.Prefix+f+exchange)
	}
	return out
}

// PidboxExchange is the remote-control request exchange of a control_exchange name.
func PidboxExchange(control string) string { return control + pidboxSuffix }

// ReplyExchange is the remote-control reply exchange of a control_exchange name.
func ReplyExchange(control string) string { return replyPrefix + control + pidboxSuffix }

// BindingKey is the SET of an exchange's bindings.
func (k Keyspace) BindingKey(exchange string) string { return k.Prefix + bindingPrefix + exchange }

// BindingScanPattern matches every binding SET of the DB.
func (k Keyspace) BindingScanPattern() string { return globEscape(k.Prefix+bindingPrefix) + "*" }

// ExchangeOfBindingKey is the inverse of BindingKey.
func (k Keyspace) ExchangeOfBindingKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, k.Prefix+bindingPrefix)
	return rest, ok && rest != ""
}

// BindingMember is a member of a binding SET: routing_key, pattern and queue joined by sep.
func (k Keyspace) BindingMember(routingKey, pattern, queue string) string {
	return routingKey + k.Sep + pattern + k.Sep + queue
}

// ParseBindingMember splits a binding member; the queue is the last field.
func (k Keyspace) ParseBindingMember(m string) (routingKey, pattern, queue string, ok bool) {
	parts := strings.SplitN(m, k.Sep, 3)
	if len(parts) != 3 || parts[2] == "" {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// UnackedKey is the hash of delivered, not yet acknowledged messages.
func (k Keyspace) UnackedKey() string { return k.Prefix + k.UnackedName }

// UnackedIndexKey is the sorted set of delivery times of UnackedKey's entries.
func (k Keyspace) UnackedIndexKey() string { return k.Prefix + k.UnackedIndex }

// ReplyQueue is the list a remote-control client with this oid receives replies on.
func ReplyQueue(oid, control string) string { return oid + "." + ReplyExchange(control) }

// globEscape makes s match itself in a Redis glob pattern.
func globEscape(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
