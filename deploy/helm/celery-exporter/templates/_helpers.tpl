{{/* Resource name: the release name, with the chart name when the release name lacks it. */}}
{{- define "celery-exporter.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "celery-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Kubernetes' recommended labels; each object adds its app.kubernetes.io/component. */}}
{{- define "celery-exporter.labels" -}}
app.kubernetes.io/name: {{ include "celery-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: celery-exporter
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The pods' selector: never changes on upgrade. */}}
{{- define "celery-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celery-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: exporter
{{- end -}}

{{- define "celery-exporter.config" -}}
{{- if .Values.config.content -}}
{{ .Values.config.content }}
{{- else -}}
{{ .Files.Get "files/celery_exporter.yml" }}
{{- end -}}
{{- end -}}
