// Package kombu holds the facts of kombu's Redis transport that the exporter must match byte for
// byte: broker URLs, transport options, key and channel names, the message envelope and binding
// sets. It has no metrics and no state; it is tested on its own against captured traffic.
package kombu
