{{/* Name of the chart, overridable. */}}
{{- define "penstock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every object: the release name, with the chart name appended unless the
release name already contains it. Truncated to 63 characters (DNS label); names derived from it
add at most 11 characters ("-standby-9"), so keep fullnameOverride short if peering is used.
*/}}
{{- define "penstock.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart label value: name-version. */}}
{{- define "penstock.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods (stable across upgrades: part of Deployment selectors). */}}
{{- define "penstock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "penstock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Standard labels of every object the chart creates. */}}
{{- define "penstock.labels" -}}
helm.sh/chart: {{ include "penstock.chart" . }}
app.kubernetes.io/name: {{ include "penstock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: penstock
{{- end }}

{{/* Standard labels plus component=operator. */}}
{{- define "penstock.operatorLabels" -}}
{{ include "penstock.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "penstock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "penstock.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference: repository:tag, or repository:tag@digest when pinned. */}}
{{- define "penstock.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "penstock.peeringName" -}}
{{- default (include "penstock.fullname" .) .Values.peering.name }}
{{- end }}

{{/* Name of the price-table ConfigMap, or "" when the built-in table is used. */}}
{{- define "penstock.priceTableConfigMap" -}}
{{- if .Values.priceTable.existingConfigMap }}
{{- .Values.priceTable.existingConfigMap }}
{{- else if .Values.priceTable.prices }}
{{- printf "%s-prices" (include "penstock.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Checks across values that the JSON schema cannot express with a clear message.
Included by the Deployment template, so every render runs them.
*/}}
{{- define "penstock.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail (printf "replicaCount=%d needs peering.enabled=true: without kopf peering every operator pod would reconcile the same Pipelines at once" (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled=true needs metrics.enabled=true" }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) }}
{{- fail (printf "metrics.port and health.port must differ (both are %d)" (int .Values.metrics.port)) }}
{{- end }}
{{- if and .Values.priceTable.prices .Values.priceTable.existingConfigMap }}
{{- fail "set either priceTable.prices or priceTable.existingConfigMap, not both" }}
{{- end }}
{{- end }}

{{/* Name of the optional Jaeger all-in-one. */}}
{{- define "penstock.jaegerName" -}}
{{- printf "%s-jaeger" (include "penstock.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where traces go: otlp.endpoint, else the chart's Jaeger when enabled, else nothing. */}}
{{- define "penstock.otlpEndpoint" -}}
{{- if .Values.otlp.endpoint }}
{{- .Values.otlp.endpoint }}
{{- else if .Values.jaeger.enabled }}
{{- printf "http://%s.%s.svc:4318" (include "penstock.jaegerName" .) .Release.Namespace }}
{{- end }}
{{- end }}
