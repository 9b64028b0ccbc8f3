variable "region" {
  description = "The cloud's region id (unused locally)."
  type        = string
}

variable "region_name" {
  description = "XPlane's name of the region: the agent's --region and the node id prefix."
  type        = string
}

variable "service" {
  description = "Service the nodes serve."
  type        = string
}

variable "node_count" {
  description = "Number of nodes (agent processes)."
  type        = number

  validation {
    condition     = var.node_count >= 0 && var.node_count <= 245 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number from 0 to 245 (one loopback address each)."
  }
}

variable "instance_type" {
  description = "Ignored locally."
  type        = string
  default     = "local"
}

variable "api_url" {
  description = "XPlane API URL the agents register with."
  type        = string
}

variable "token_file" {
  description = "File holding the bootstrap token (read by the agent, never by terraform)."
  type        = string
}

variable "state_dir" {
  description = "Directory for the agents' pid, state and log files (absolute)."
  type        = string
}

variable "agent_command" {
  description = "The xplane executable."
  type        = string
  default     = "xplane"
}

variable "address_prefix" {
  description = "First three octets of the nodes' loopback addresses; node i gets <prefix>.<i+10>."
  type        = string
  default     = "127.0.1"
}

variable "health_port" {
  description = "Port of each agent's /healthz (--serve-health) on its own address."
  type        = number
  default     = 18080
}

variable "revision" {
  description = "The infra repo commit being applied; a new one revives dead agents."
  type        = string
  default     = ""
}
