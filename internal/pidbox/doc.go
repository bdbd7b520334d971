// Package pidbox is a remote-control client for Celery workers on a Redis broker: it broadcasts
// commands (ping, stats, active_queues, enable_events, ...) to every worker's pidbox and collects
// the replies, exactly as Celery's own client (kombu.pidbox.Mailbox) does on the wire. It knows
// the protocol only; what the replies mean is the caller's business.
//
// The sequence of one round, as kombu does it:
//
//  1. SADD the reply binding "<oid> sep sep <oid>.reply.celery.pidbox" to
//     "_kombu.binding.reply.celery.pidbox". Workers look the binding up when they reply; without
//     it the reply is silently dropped, so it must exist before the request is published.
//  2. PUBLISH one request per command to "/<db>.celery.pidbox" (no routing-key suffix).
//  3. BRPOP the reply list until no reply came for the idle timeout (Celery's "timeout"), the total
//     deadline passed, or every expected reply arrived.
//  4. SREM the binding and DEL the reply lists, whatever happened before: a client that leaves
//     them behind leaks a key per round, for ever.
package pidbox
