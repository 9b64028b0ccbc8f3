variable "region" {
  description = "The cloud's region id."
  type        = string
}

variable "region_name" {
  description = "XPlane's name of the region (agent --region, tags)."
  type        = string
}

variable "service" {
  description = "Service the nodes serve."
  type        = string
}

variable "node_count" {
  description = "Number of instances."
  type        = number
}

variable "instance_type" {
  description = "Instance type."
  type        = string
}

variable "api_url" {
  description = "XPlane API URL the agents register with."
  type        = string
}

variable "bootstrap_token" {
  description = "Bootstrap token, written to the agent's env file by cloud-init."
  type        = string
  sensitive   = true
}

variable "agent_version" {
  description = "xplane version installed on the nodes."
  type        = string
  default     = "latest"
}

variable "security_group_ids" {
  description = "Security groups of the nodes."
  type        = list(string)
  default     = []
}

variable "key_name" {
  description = "SSH key pair name (null: none)."
  type        = string
  default     = null
}

variable "image_id" {
  description = "Image of the nodes (null: newest matching image_name_regex)."
  type        = string
  default     = null
}

variable "image_name_regex" {
  description = "Image name looked up when image_id is null."
  type        = string
  default     = "^ubuntu_24_04_x64"
}

variable "vswitch_id" {
  description = "VSwitch (subnet) of the nodes."
  type        = string
}
