package kombu

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/valyala/fastjson"
)

// DecodeError says why a message could not be decoded; Reason is a short, bounded label value.
type DecodeError struct {
	Reason string
	Err    error
}

func (e *DecodeError) Error() string {
	if e.Err == nil {
		return e.Reason
	}
	return e.Reason + ": " + e.Err.Error()
}

func (e *DecodeError) Unwrap() error { return e.Err }

// Reasons a message is rejected, as counted by the exporter.
const (
	ReasonInvalidEnvelope = "invalid_envelope"
	ReasonInvalidBase64   = "invalid_base64"
	ReasonContentType     = "unsupported_content_type"
	ReasonCompressed      = "compressed"
)

// ReasonOf returns the DecodeError reason of err, or fallback.
func ReasonOf(err error, fallback string) string {
	var de *DecodeError
	if errors.As(err, &de) {
		return de.Reason
	}
	return fallback
}

// EnvelopeDecoder unwraps the kombu envelope of pub/sub messages. It reuses its buffers: what
// Decode returns is valid until the next call. Not safe for concurrent use.
type EnvelopeDecoder struct {
	p   fastjson.Parser
	buf []byte
}

// Decode returns the payload of a kombu JSON envelope, base64-decoded when
// properties.body_encoding says so. Only JSON payloads are accepted: events are always JSON
// (event_serializer), and nothing else could be parsed safely.
func (d *EnvelopeDecoder) Decode(msg []byte) ([]byte, error) {
	v, err := d.p.ParseBytes(msg)
	if err != nil {
		return nil, &DecodeError{Reason: ReasonInvalidEnvelope, Err: err}
	}
	return d.decodeValue(v)
}

func (d *EnvelopeDecoder) decodeValue(v *fastjson.Value) ([]byte, error) {
	o, err := v.Object()
	if err != nil {
		return nil, &DecodeError{Reason: ReasonInvalidEnvelope, Err: err}
	}
	body := o.Get("body")
	if body == nil || body.Type() != fastjson.TypeString {
		return nil, &DecodeError{Reason: ReasonInvalidEnvelope, Err: errors.New("no string body")}
	}
	if ct := o.Get("content-type"); ct != nil {
		if b := ct.GetStringBytes(); string(b) != "application/json" && len(b) > 0 {
			return nil, &DecodeError{Reason: ReasonContentType, Err: fmt.Errorf("%.40q", b)}
		}
	}
	if h := v.Get("headers", "compression"); h != nil && h.Type() == fastjson.TypeString {
		return nil, &DecodeError{Reason: ReasonCompressed}
	}
	raw := body.GetStringBytes()
	enc := v.Get("properties", "body_encoding")
	if enc == nil || string(enc.GetStringBytes()) != "base64" {
		d.buf = append(d.buf[:0], raw...)
		return d.buf, nil
	}
	n := base64.StdEncoding.DecodedLen(len(raw))
	if cap(d.buf) < n {
		d.buf = make([]byte, n)
	}
	n, err = base64.StdEncoding.Decode(d.buf[:n], raw)
	if err != nil {
		return nil, &DecodeError{Reason: ReasonInvalidBase64, Err: err}
	}
	return d.buf[:n], nil
}

// Message is a kombu envelope decoded for the slow paths (remote control, queued messages), where
// convenience beats speed.
type Message struct {
	Body            []byte // decoded payload
	ContentType     string
	ContentEncoding string
	Headers         map[string]any
	Properties      Properties
}

// Properties of a kombu message.
type Properties struct {
	DeliveryTag   string       `json:"delivery_tag"`
	BodyEncoding  string       `json:"body_encoding"`
	Priority      int          `json:"priority"`
	CorrelationID string       `json:"correlation_id,omitempty"`
	ReplyTo       string       `json:"reply_to,omitempty"`
	DeliveryMode  int          `json:"delivery_mode"`
	DeliveryInfo  DeliveryInfo `json:"delivery_info"`
}

// DeliveryInfo says where a message was sent.
type DeliveryInfo struct {
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routing_key"`
}

type rawMessage struct {
	Body            string         `json:"body"`
	ContentType     string         `json:"content-type"`
	ContentEncoding string         `json:"content-encoding"`
	Headers         map[string]any `json:"headers"`
	Properties      Properties     `json:"properties"`
}

// ParseMessage decodes a whole envelope.
func ParseMessage(data []byte) (*Message, error) {
	var r rawMessage
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, &DecodeError{Reason: ReasonInvalidEnvelope, Err: err}
	}
	m := &Message{ContentType: r.ContentType, ContentEncoding: r.ContentEncoding,
		Headers: r.Headers, Properties: r.Properties, Body: []byte(r.Body)}
	if r.Properties.BodyEncoding == "base64" {
		b, err := base64.StdEncoding.DecodeString(r.Body)
		if err != nil {
			return nil, &DecodeError{Reason: ReasonInvalidBase64, Err: err}
		}
		m.Body = b
	}
	return m, nil
}

// HeaderString returns a string header, or "".
func (m *Message) HeaderString(name string) string {
	s, _ := m.Headers[name].(string)
	return s
}

// TaskID is the id of a task message: the `id` header of protocol 2, else the body's `id`
// (protocol 1). "" when it has none.
func (m *Message) TaskID() string {
	if id := m.HeaderString("id"); id != "" {
		return id
	}
	if m.ContentType != "application/json" {
		return ""
	}
	var v1 struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(m.Body, &v1) == nil {
		return v1.ID
	}
	return ""
}

// NewMessage builds the envelope kombu's Producer would PUBLISH for a JSON body. Every message
// carries properties.delivery_tag: a worker that receives one without it dies with
// KeyError('delivery_tag') in kombu's virtual Message.
func NewMessage(body []byte, exchange, routingKey string, headers map[string]any) ([]byte, error) {
	if headers == nil {
		headers = map[string]any{}
	}
	return json.Marshal(rawMessage{
		Body:            base64.StdEncoding.EncodeToString(body),
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Headers:         headers,
		Properties: Properties{
			DeliveryTag:  NewUUID(),
			BodyEncoding: "base64",
			DeliveryMode: 2,
			DeliveryInfo: DeliveryInfo{Exchange: exchange, RoutingKey: routingKey},
		},
	})
}

// UnackedEntry is the value kombu's QoS keeps per delivered message in the unacked hash:
// a JSON array [envelope, exchange, routing_key].
type UnackedEntry struct {
	Exchange   string
	RoutingKey string
}

// ParseUnacked reads the exchange and routing key of an unacked hash value. The parser is passed
// in so a scan over many entries reuses it.
func ParseUnacked(p *fastjson.Parser, value []byte) (UnackedEntry, error) {
	v, err := p.ParseBytes(value)
	if err != nil {
		return UnackedEntry{}, &DecodeError{Reason: ReasonInvalidEnvelope, Err: err}
	}
	a, err := v.Array()
	if err != nil || len(a) < 3 {
		return UnackedEntry{}, &DecodeError{Reason: ReasonInvalidEnvelope, Err: errors.New("want [message, exchange, routing_key]")}
	}
	return UnackedEntry{Exchange: string(a[1].GetStringBytes()), RoutingKey: string(a[2].GetStringBytes())}, nil
}

// NewUUID returns a random (version 4) UUID string, as kombu's uuid() does.
func NewUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hex = "0123456789abcdef"
	out := make([]byte, 36)
	j := 0
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out[j] = '-'
			j++
		}
		out[j], out[j+1] = hex[c>>4], hex[c&0x0f]
		j += 2
	}
	return string(out)
}

// DecodeString is Decode for a payload held in a string (what a Redis client hands over), without
// copying it first.
func (d *EnvelopeDecoder) DecodeString(msg string) ([]byte, error) {
	v, err := d.p.Parse(msg)
	if err != nil {
		return nil, &DecodeError{Reason: ReasonInvalidEnvelope, Err: err}
	}
	return d.decodeValue(v)
}
