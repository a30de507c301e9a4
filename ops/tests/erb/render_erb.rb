# Evaluates a BOSH job's ERB template the way the director does, without BOSH, so tests can check
# the one ERB template of the release against `etcd-broker-ops render`.
#
#   ruby render_erb.rb TEMPLATE.erb CONTEXT.json
#
# CONTEXT.json is what the director hands a job's templates, as `etcd-broker-ops render` writes
# it (context.json): {"properties": <every declared property, resolved; null when unset>,
# "links": {<name>: {"instances": [...], "properties": {...}}}, "spec": {...}}.
# The rendered template goes to stdout. Only the standard library is used (erb, json, ostruct).
#
# The helpers follow bosh-template's EvaluationContext: p (dotted names, a list of names, a
# default), if_p (yields when every value is non-nil, even false; `.else`), spec (an OpenStruct),
# link / if_link (instances with name, index, id, az, address, bootstrap; p / if_p on the link's
# properties). ERB runs with trim_mode '-', as in BOSH.

require 'erb'
require 'json'
require 'ostruct'

module PropertyLookup
  def lookup_property(collection, name)
    return nil if collection.nil?
    name.split('.').reduce(collection) do |ref, key|
      return nil unless ref.is_a?(Hash)
      value = ref[key]
      return nil if value.nil?
      value
    end
  end
end

class UnknownProperty < StandardError
  def initialize(names)
    super("Can't find property '#{names.join("', or '")}'")
  end
end

class UnknownLink < StandardError
  def initialize(name)
    super("Can't find link '#{name}'")
  end
end

class ActiveElseBlock
  def initialize(context)
    @context = context
  end

  def else
    yield
  end

  def else_if_p(*names, &block)
    @context.if_p(*names, &block)
  end

  def else_if_link(name, &block)
    @context.if_link(name, &block)
  end
end

class InactiveElseBlock
  def else; end

  def else_if_p(*_names)
    InactiveElseBlock.new
  end

  def else_if_link(_name)
    InactiveElseBlock.new
  end
end

# p / if_p over a properties hash, shared by the context and links.
module PropertyAccess
  include PropertyLookup

  def p(*args)
    names = Array(args[0])
    names.each do |name|
      result = lookup_property(@raw_properties, name)
      return result unless result.nil?
    end
    return args[1] if args.length == 2
    raise UnknownProperty.new(names)
  end

  def if_p(*names)
    values = names.map do |name|
      value = lookup_property(@raw_properties, name)
      return ActiveElseBlock.new(self) if value.nil?
      value
    end
    yield(*values)
    InactiveElseBlock.new
  end
end

class EvaluationLinkInstance
  include PropertyAccess
  attr_reader :name, :index, :id, :az, :address, :bootstrap, :properties

  def initialize(spec)
    @name = spec['name']
    @index = spec['index']
    @id = spec['id']
    @az = spec['az']
    @address = spec['address']
    @bootstrap = spec['bootstrap']
    @properties = spec['properties']
    @raw_properties = @properties
  end
end

class EvaluationLink
  include PropertyAccess
  attr_reader :instances, :properties

  def initialize(spec)
    @instances = (spec['instances'] || []).map { |i| EvaluationLinkInstance.new(i) }
    @properties = spec['properties'] || {}
    @raw_properties = @properties
  end
end

class EvaluationContext
  include PropertyAccess
  attr_reader :spec, :raw_properties

  def initialize(context)
    @raw_properties = context.fetch('properties')
    @links = context['links'] || {}
    @spec = openstruct(context['spec'] || {})
  end

  def link(name)
    raise UnknownLink.new(name) unless @links.key?(name)
    EvaluationLink.new(@links[name])
  end

  def if_link(name)
    return ActiveElseBlock.new(self) unless @links.key?(name)
    yield link(name)
    InactiveElseBlock.new
  end

  def get_binding
    binding
  end

  private

  def openstruct(object)
    case object
    when Hash then OpenStruct.new(object.transform_values { |v| openstruct(v) })
    when Array then object.map { |v| openstruct(v) }
    else object
    end
  end
end

if ARGV.length != 2
  warn 'usage: ruby render_erb.rb TEMPLATE.erb CONTEXT.json'
  exit 2
end
template = File.read(ARGV[0])
context = EvaluationContext.new(JSON.parse(File.read(ARGV[1])))
begin
  print ERB.new(template, trim_mode: '-').result(context.get_binding)
rescue UnknownProperty, UnknownLink => e
  warn "Error filling in template '#{File.basename(ARGV[0])}': #{e.message}"
  exit 1
end
